package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrl "sigs.k8s.io/controller-runtime/pkg/reconcile"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
)

// secretReads counts the whole Secrets a reconciler reads from the API
// server.
type secretReads struct {
	client.Reader
	n atomic.Int64
}

func (c *secretReads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*corev1.Secret); ok {
		c.n.Add(1)
	}
	return c.Reader.Get(ctx, key, obj, opts...)
}

// TestSecretsCachedAsMetadataOnly: the controller keeps no key material:
// its cache holds Secrets' metadata only and refuses a whole Secret, and a
// reconcile reads a Secret's content from the API server only when the
// Secret or the record changed since it last checked that the Secret holds
// one of the record's keys; a Secret changed behind keyward's back is
// still read and judged.
func TestSecretsCachedAsMetadataOnly(t *testing.T) {
	ns := namespace(t)
	reads := &secretReads{}
	m := startManager(t, ns, func(r *ApiKeyReconciler) { reads.Reader = r.APIReader; r.APIReader = reads })
	ctx := context.Background()

	err := m.mgr.GetClient().Get(ctx, client.ObjectKey{Namespace: ns, Name: "any"}, &corev1.Secret{})
	if !errors.Is(err, errWholeSecret) {
		t.Fatalf("a whole Secret read through the controller's cache: %v", err)
	}
	if err := m.mgr.GetClient().List(ctx, &corev1.SecretList{}, client.InNamespace(ns)); !errors.Is(err, errWholeSecret) {
		t.Fatalf("Secrets listed whole through the controller's cache: %v", err)
	}

	create(t, newKey(ns, "quiet"))
	// Reconciles of a copy older than the controller's own writes would
	// wait for the cache and read nothing.
	m.waitCached(t, waitReason(t, ns, "quiet", kw.ReasonIssued))
	after := reads.n.Load()
	if got := m.rec.tokens.len(); got != 1 {
		t.Fatalf("%d token checks remembered, want 1", got)
	}
	req := ctrl.Request{NamespacedName: client.ObjectKey{Namespace: ns, Name: "quiet"}}
	for range 5 {
		if _, err := m.rec.Reconcile(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if n := reads.n.Load() - after; n != 0 {
		t.Fatalf("5 reconciles of an unchanged key read its Secret %d times, want 0", n)
	}

	// The tenant writes another (valid) token into the Secret: the
	// Secret's new version is read and refused.
	sec := &corev1.Secret{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "quiet-apikey"}, sec); err != nil {
		t.Fatal(err)
	}
	remember(sec)
	other, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(sec.DeepCopy())
	sec.Data[kw.SecretKeyToken] = []byte(other.Token())
	sec.Annotations[kw.AnnotationKeyID] = other.ID
	if err := k8s.Patch(ctx, sec, patch); err != nil {
		t.Fatal(err)
	}
	remember(sec) // neither token may appear in logs or Events
	got := waitReason(t, ns, "quiet", kw.ReasonSecretConflict)
	if c := readyCondition(got); !strings.Contains(c.Message, "not one of this ApiKey's keys") {
		t.Fatalf("message: %s", c.Message)
	}
	if reads.n.Load() == after {
		t.Fatal("the changed Secret was judged without reading it")
	}

	// Deleting the ApiKey forgets what was checked.
	if err := k8s.Delete(ctx, got); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the ApiKey's token check forgotten", func() (bool, string) {
		n := m.rec.tokens.len()
		return n == 0, fmt.Sprint(n, " remembered")
	})
}
