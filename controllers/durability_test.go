package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// TestCrashBetweenWritesNeverRegenerates kills the controller right after
// each write of a first issue and checks the next controller finishes the
// issue with the key already written, never a new one.
func TestCrashBetweenWritesNeverRegenerates(t *testing.T) {
	t.Parallel()
	for _, point := range []string{PointSecretWritten, PointRecordWritten} {
		t.Run(point, func(t *testing.T) {
			ns := namespace(t)
			m, waitCrash := startCrashingManager(t, ns, point)
			create(t, newKey(ns, "fragile"))
			waitCrash()
			m.stop() // the process is gone: nothing after the crash point ran

			sec := get(t, ns, "fragile-apikey", &corev1.Secret{})
			key := get(t, ns, "fragile", &kw.ApiKey{})
			if key.Status.KeyID != "" {
				t.Fatalf("status was written before the crash point: %+v", key.Status)
			}
			err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "fragile"}, &kw.ApiKeyRecord{})
			if wantRecord := point == PointRecordWritten; wantRecord == apierrors.IsNotFound(err) {
				t.Fatalf("record after crash at %s: %v", point, err)
			}

			startManager(t, ns)
			key = waitReason(t, ns, "fragile", kw.ReasonIssued)
			after := get(t, ns, "fragile-apikey", &corev1.Secret{})
			if after.UID != sec.UID || !bytes.Equal(after.Data[kw.SecretKeyToken], sec.Data[kw.SecretKeyToken]) {
				t.Fatal("the Secret was rewritten after the crash")
			}
			if key.Status.KeyID != string(sec.Data[kw.SecretKeyKeyID]) {
				t.Fatalf("status names key %s, the Secret holds %s", key.Status.KeyID, sec.Data[kw.SecretKeyKeyID])
			}
			verifies(t, get(t, ns, "fragile", &kw.ApiKeyRecord{}), after)
		})
	}
}

// startCrashingManager starts a controller that dies the first time it
// reaches the crash point: the reconcile ends there and its client makes
// no write after. waitCrash waits for that moment.
func startCrashingManager(t testing.TB, ns, point string) (m *manager, waitCrash func()) {
	t.Helper()
	var crashed atomic.Bool
	m = startManager(t, ns, withCrashAt(func(p string) bool {
		return p == point && crashed.CompareAndSwap(false, true)
	}), func(r *ApiKeyReconciler) { r.Client = deadAfter{r.Client, &crashed} })
	return m, func() {
		t.Helper()
		eventually(t, 10*time.Second, "the injected crash at "+point, func() (bool, string) { return crashed.Load(), "" })
	}
}

// deadAfter is the controller's client that, once the process has
// "crashed", writes nothing more: a dead process makes no writes.
type deadAfter struct {
	client.Client
	dead *atomic.Bool
}

var errDead = errors.New("process is dead")

func (c deadAfter) Create(ctx context.Context, o client.Object, opts ...client.CreateOption) error {
	if c.dead.Load() {
		return errDead
	}
	return c.Client.Create(ctx, o, opts...)
}

func (c deadAfter) Patch(ctx context.Context, o client.Object, p client.Patch, opts ...client.PatchOption) error {
	if c.dead.Load() {
		return errDead
	}
	return c.Client.Patch(ctx, o, p, opts...)
}

func (c deadAfter) Update(ctx context.Context, o client.Object, opts ...client.UpdateOption) error {
	if c.dead.Load() {
		return errDead
	}
	return c.Client.Update(ctx, o, opts...)
}

func (c deadAfter) Delete(ctx context.Context, o client.Object, opts ...client.DeleteOption) error {
	if c.dead.Load() {
		return errDead
	}
	return c.Client.Delete(ctx, o, opts...)
}

func (c deadAfter) Status() client.SubResourceWriter { return deadWriter{c.Client.Status(), c.dead} }

type deadWriter struct {
	client.SubResourceWriter
	dead *atomic.Bool
}

func (w deadWriter) Patch(ctx context.Context, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
	if w.dead.Load() {
		return errDead
	}
	return w.SubResourceWriter.Patch(ctx, o, p, opts...)
}

func (w deadWriter) Update(ctx context.Context, o client.Object, opts ...client.SubResourceUpdateOption) error {
	if w.dead.Load() {
		return errDead
	}
	return w.SubResourceWriter.Update(ctx, o, opts...)
}

type snapshot struct {
	secretUID types.UID
	token     string
	digest    string
}

// TestRestartsNeverRegenerate restarts the controller 20 times while it
// issues 200 keys, some restarts mid-issue, and checks that once a key is
// written it never changes: not its Secret, not its hash.
func TestRestartsNeverRegenerate(t *testing.T) {
	t.Parallel()
	const keysN, restarts = 200, 20
	ns := namespace(t)
	for i := range keysN {
		create(t, newKey(ns, fmt.Sprintf("k%03d", i)))
	}
	first := map[string]snapshot{}
	check := func(round int) int {
		var secrets corev1.SecretList
		var records kw.ApiKeyRecordList
		if err := k8s.List(context.Background(), &secrets, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		if err := k8s.List(context.Background(), &records, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		digests := map[string]string{}
		for _, r := range records.Items {
			if len(r.Spec.Keys) != 1 {
				t.Fatalf("round %d: record %s holds %d keys", round, r.Name, len(r.Spec.Keys))
			}
			digests[r.Name] = r.Spec.Keys[0].Digest
		}
		for i := range secrets.Items {
			s := &secrets.Items[i]
			remember(s)
			name := s.Labels[kw.LabelApiKey]
			now := snapshot{s.UID, string(s.Data[kw.SecretKeyToken]), digests[name]}
			was, ok := first[name]
			switch {
			case !ok || was.digest == "" && now.token == was.token:
				first[name] = now
			case now != was:
				t.Fatalf("round %d: key of %s changed", round, name)
			}
		}
		for name, d := range digests {
			if was, ok := first[name]; !ok || was.digest != d {
				t.Fatalf("round %d: record %s has no Secret or another digest", round, name)
			}
		}
		return len(records.Items)
	}
	for round := range restarts {
		m := startManager(t, ns)
		time.Sleep(time.Duration(50+rand.IntN(400)) * time.Millisecond) // a restart at a random moment
		m.stop()
		t.Logf("round %d: %d keys recorded", round, check(round))
	}
	startManager(t, ns)
	for i := range keysN {
		waitReason(t, ns, fmt.Sprintf("k%03d", i), kw.ReasonIssued)
	}
	if n := check(restarts); n != keysN {
		t.Fatalf("%d records for %d keys", n, keysN)
	}
	for i := range keysN {
		name := fmt.Sprintf("k%03d", i)
		verifies(t, get(t, ns, name, &kw.ApiKeyRecord{}), get(t, ns, name+"-apikey", &corev1.Secret{}))
	}
}

// TestStatusLostInRestore wipes an ApiKey's status, as a Velero restore
// does, and checks the controller rebuilds it from the record without
// writing the Secret or the record.
func TestStatusLostInRestore(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	create(t, newKey(ns, "restored"))
	key := waitReason(t, ns, "restored", kw.ReasonIssued)
	sec := get(t, ns, "restored-apikey", &corev1.Secret{})
	rec := get(t, ns, "restored", &kw.ApiKeyRecord{})

	wiped := key.DeepCopy()
	wiped.Status = kw.ApiKeyStatus{}
	if err := k8s.Status().Update(context.Background(), wiped); err != nil {
		t.Fatal(err)
	}
	got := waitReason(t, ns, "restored", kw.ReasonIssued)
	if got.Status.KeyID != key.Status.KeyID || !got.Status.IssuedAt.Equal(key.Status.IssuedAt) {
		t.Fatalf("status rebuilt as key %s issued %v; was %s issued %v",
			got.Status.KeyID, got.Status.IssuedAt, key.Status.KeyID, key.Status.IssuedAt)
	}
	for _, o := range []client.Object{sec, rec} {
		was := o.GetResourceVersion()
		get(t, ns, o.GetName(), o)
		if o.GetResourceVersion() != was {
			t.Errorf("%T %s was written while status was rebuilt", o, o.GetName())
		}
	}
	verifies(t, rec, sec)
}

// TestRestoreFromSpecAlone recreates an ApiKey from its spec, with its
// Secret and record restored without owner references (what Velero does),
// and checks they are adopted: the same token verifies, nothing is issued.
func TestRestoreFromSpecAlone(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	m := startManager(t, ns)
	orig := newKey(ns, "phoenix")
	create(t, orig)
	key := waitReason(t, ns, "phoenix", kw.ReasonIssued)
	sec := get(t, ns, "phoenix-apikey", &corev1.Secret{})
	rec := get(t, ns, "phoenix", &kw.ApiKeyRecord{})
	m.stop()

	loseCluster(t, key, sec, rec)

	// The restore: metadata without UID, owners or versions; no status.
	restoreMeta := func(o metav1.ObjectMeta) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name, Labels: o.Labels, Annotations: o.Annotations}
	}
	rSec := &corev1.Secret{ObjectMeta: restoreMeta(sec.ObjectMeta), Type: sec.Type, Data: sec.Data}
	rRec := &kw.ApiKeyRecord{ObjectMeta: restoreMeta(rec.ObjectMeta), Spec: rec.Spec}
	rKey := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "phoenix"}, Spec: orig.Spec}
	create(t, rSec, rRec, rKey)

	startManager(t, ns)
	got := waitReason(t, ns, "phoenix", kw.ReasonIssued)
	if got.Status.KeyID != key.Status.KeyID {
		t.Fatalf("restored ApiKey has key %s, was %s", got.Status.KeyID, key.Status.KeyID)
	}
	after := get(t, ns, "phoenix-apikey", &corev1.Secret{})
	afterRec := get(t, ns, "phoenix", &kw.ApiKeyRecord{})
	if after.UID != rSec.UID || !bytes.Equal(after.Data[kw.SecretKeyToken], sec.Data[kw.SecretKeyToken]) {
		t.Fatal("the restored Secret was replaced")
	}
	if afterRec.UID != rRec.UID || afterRec.Spec.Keys[0].Digest != rec.Spec.Keys[0].Digest {
		t.Fatal("the restored record was replaced")
	}
	for _, o := range []metav1.Object{after, afterRec} {
		if ref := metav1.GetControllerOf(o); ref == nil || ref.UID != got.UID {
			t.Errorf("%s was not adopted: %v", o.GetName(), o.GetOwnerReferences())
		}
	}
	verifies(t, afterRec, after)
}

// TestRestoredSecretAloneIsAdopted restores a Secret without its record (a
// backup of Secrets only): the record is rebuilt from it, not a new key.
func TestRestoredSecretAloneIsAdopted(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	m := startManager(t, ns)
	orig := newKey(ns, "half")
	create(t, orig)
	key := waitReason(t, ns, "half", kw.ReasonIssued)
	sec := get(t, ns, "half-apikey", &corev1.Secret{})
	m.stop()
	loseCluster(t, key, sec, &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "half"}})
	create(t, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sec.Name, Labels: sec.Labels, Annotations: sec.Annotations},
		Type:       sec.Type, Data: sec.Data,
	}, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "half"}, Spec: orig.Spec})
	startManager(t, ns)
	got := waitReason(t, ns, "half", kw.ReasonIssued)
	if got.Status.KeyID != key.Status.KeyID {
		t.Fatalf("key %s, was %s", got.Status.KeyID, key.Status.KeyID)
	}
	verifies(t, get(t, ns, "half", &kw.ApiKeyRecord{}), get(t, ns, "half-apikey", &corev1.Secret{}))
}

// loseCluster deletes an ApiKey (with no controller running to revoke it)
// and the objects given, as losing the cluster before a restore would.
func loseCluster(t *testing.T, key *kw.ApiKey, objs ...client.Object) {
	t.Helper()
	ctx := context.Background()
	patch := client.MergeFrom(key.DeepCopy())
	controllerutil.RemoveFinalizer(key, kw.Finalizer)
	if err := k8s.Patch(ctx, key, patch); err != nil {
		t.Fatal(err)
	}
	for _, o := range append([]client.Object{key}, objs...) {
		if err := k8s.Delete(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
}
