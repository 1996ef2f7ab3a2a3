package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// TestCacheDropsLastAppliedConfiguration: an ApiKey applied with kubectl
// (or a GitOps tool applying client-side) carries its whole manifest again
// in an annotation. The controller's cache drops it, as it drops managed
// fields, since the controller never reads it; on the API server it stays
// as it was through every write of the controller (finalizer, status,
// archival), so the next kubectl apply merges as before.
func TestCacheDropsLastAppliedConfiguration(t *testing.T) {
	ns := namespace(t)
	m := startManager(t, ns)
	ctx := context.Background()

	key := newKey(ns, "applied")
	manifest, err := json.Marshal(map[string]any{
		"apiVersion": kw.GroupVersion.String(), "kind": "ApiKey",
		"metadata": map[string]any{"name": key.Name, "namespace": ns, "annotations": map[string]any{}},
		"spec":     key.Spec,
	})
	if err != nil {
		t.Fatal(err)
	}
	applied := string(manifest) + "\n"
	key.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: applied, "team": "payments"}
	create(t, key)
	waitReason(t, ns, "applied", kw.ReasonIssued)
	remember(get(t, ns, key.EffectiveSecretName(), &corev1.Secret{}))

	cached := &kw.ApiKey{}
	if err := m.mgr.GetClient().Get(ctx, client.ObjectKeyFromObject(key), cached); err != nil {
		t.Fatal(err)
	}
	if _, ok := cached.Annotations[corev1.LastAppliedConfigAnnotation]; ok || cached.Annotations["team"] != "payments" {
		t.Fatalf("cached annotations %v: want the team's, without %s", cached.Annotations, corev1.LastAppliedConfigAnnotation)
	}
	if cached.ManagedFields != nil {
		t.Fatalf("cached managed fields: %v", cached.ManagedFields)
	}

	live := get(t, ns, "applied", &kw.ApiKey{})
	if got := live.Annotations[corev1.LastAppliedConfigAnnotation]; got != applied {
		t.Fatalf("after issuance the API server holds %q, want the applied manifest", got)
	}
	patch := client.MergeFrom(live.DeepCopy())
	live.Spec.Archived = true
	if err := k8s.Patch(ctx, live, patch); err != nil {
		t.Fatal(err)
	}
	waitReason(t, ns, "applied", kw.ReasonArchived)
	live = get(t, ns, "applied", &kw.ApiKey{})
	if got := live.Annotations[corev1.LastAppliedConfigAnnotation]; got != applied || live.Annotations["team"] != "payments" {
		t.Fatalf("after archival the API server holds %v, want the applied manifest and the team's annotation", live.Annotations)
	}
}

// TestCacheKeepsOnlyKeywardsMetadataOfSecrets: the controller caches every
// Secret labelled app.kubernetes.io/managed-by=keyward, and anyone who may
// create a Secret can set that label, with 256 KiB of annotations and any
// number of labels beside it. The cache keeps of each only the labels and
// annotations keyward writes, so a planted Secret costs the controller a
// few hundred bytes; keyward's own Secrets keep what it reads.
func TestCacheKeepsOnlyKeywardsMetadataOfSecrets(t *testing.T) {
	ns := namespace(t)
	m := startManager(t, ns)
	ctx := context.Background()

	planted := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "planted",
		Labels:      map[string]string{kw.LabelManagedBy: kw.ManagedByValue},
		Annotations: map[string]string{"ballast": strings.Repeat("x", 200<<10)}}}
	for i := range 100 {
		planted.Labels[fmt.Sprintf("ballast-%03d", i)] = strings.Repeat("y", 63)
	}
	create(t, planted)
	create(t, newKey(ns, "own"))
	waitReason(t, ns, "own", kw.ReasonIssued)

	cached := secretMetadata()
	eventually(t, 10*time.Second, "the planted Secret in the cache", func() (bool, string) {
		err := m.mgr.GetClient().Get(ctx, client.ObjectKey{Namespace: ns, Name: "planted"}, cached)
		return err == nil, fmt.Sprint(err)
	})
	if len(cached.Annotations) != 0 || len(cached.Labels) != 1 || cached.Labels[kw.LabelManagedBy] != kw.ManagedByValue {
		t.Fatalf("cached planted Secret: %d annotations, labels %v; want only %s", len(cached.Annotations), cached.Labels, kw.LabelManagedBy)
	}
	own := secretMetadata()
	if err := m.mgr.GetClient().Get(ctx, client.ObjectKey{Namespace: ns, Name: "own-apikey"}, own); err != nil {
		t.Fatal(err)
	}
	if own.Labels[kw.LabelApiKey] != "own" || own.Annotations[kw.AnnotationKeyID] == "" || own.Annotations[kw.AnnotationGeneration] == "" {
		t.Fatalf("keyward's own Secret lost what the controller reads: labels %v, annotations %v", own.Labels, own.Annotations)
	}
}

// TestCacheKeepsOnlyGuardedLabelsOfNamespaces: the controller caches every
// namespace, for the labels policies select on, and whoever may create a
// namespace (self-service namespaces) may give it any number of labels and
// 256 KiB of annotations. The cache keeps of each only the labels a policy
// may select on (policy.Guarded), and ScopeNotAllowed still follows them.
func TestCacheKeepsOnlyGuardedLabelsOfNamespaces(t *testing.T) {
	ns := namespace(t)
	m := startManager(t, ns)
	ctx := context.Background()

	inflated := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns + "-inflated",
		Labels:      map[string]string{"keyward.dev/write-access": "true"},
		Annotations: map[string]string{"ballast": strings.Repeat("x", 200<<10)}}}
	for i := range 100 {
		inflated.Labels[fmt.Sprintf("ballast-%03d", i)] = strings.Repeat("y", 63)
	}
	create(t, inflated)
	cached := &corev1.Namespace{}
	eventually(t, 10*time.Second, "the namespace in the cache", func() (bool, string) {
		err := m.mgr.GetClient().Get(ctx, client.ObjectKey{Name: inflated.Name}, cached)
		return err == nil, fmt.Sprint(err)
	})
	if len(cached.Annotations) != 0 || len(cached.Labels) != 1 || cached.Labels["keyward.dev/write-access"] != "true" {
		t.Fatalf("cached namespace: %d annotations, %d labels; want keyward.dev/write-access only",
			len(cached.Annotations), len(cached.Labels))
	}
}
