package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
)

// verifies checks that the record verifies the Secret's token, as the auth
// endpoint will.
func verifies(t testing.TB, rec *kw.ApiKeyRecord, sec *corev1.Secret) {
	t.Helper()
	id, secret, err := keys.Parse(string(sec.Data[kw.SecretKeyToken]))
	if err != nil {
		t.Fatalf("Secret %s holds no valid token: %v", sec.Name, err)
	}
	cur := rec.Current()
	if cur == nil || cur.KeyID != id {
		t.Fatalf("record %s does not hold key %s", rec.Name, id)
	}
	sum, err := keys.ParseDigest(cur.Digest)
	if err != nil || !sum.Matches(secret) {
		t.Fatalf("record %s digest does not verify the Secret's token (%v)", rec.Name, err)
	}
}

func TestIssuesKeyIntoSecret(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	start := time.Now()
	create(t, newKey(ns, "reader", "occupancy:read", "agents:activate"))
	key := waitReason(t, ns, "reader", kw.ReasonIssued)
	t.Logf("Active %s after the create", time.Since(start))

	if key.Status.State != kw.StateActive || key.Status.SecretName != "reader-apikey" ||
		key.Status.Endpoint != "https://api.example.test" || key.Status.IssuedAt == nil ||
		key.Status.Scopes != "occupancy:read,agents:activate" {
		t.Fatalf("status = %+v", key.Status)
	}
	sec := get(t, ns, "reader-apikey", &corev1.Secret{})
	rec := get(t, ns, "reader", &kw.ApiKeyRecord{})
	verifies(t, rec, sec)

	if sec.Type != SecretType || sec.Immutable != nil && *sec.Immutable {
		t.Errorf("Secret type %q immutable %v; want %q and mutable", sec.Type, sec.Immutable, SecretType)
	}
	want := map[string]string{
		kw.SecretKeyKeyID:    key.Status.KeyID,
		kw.SecretKeyEndpoint: "https://api.example.test",
	}
	for k, v := range want {
		if string(sec.Data[k]) != v {
			t.Errorf("Secret data %s = %q, want %q", k, sec.Data[k], v)
		}
	}
	if tok := string(sec.Data[kw.SecretKeyToken]); !strings.Contains(tok, string(sec.Data[kw.SecretKeySecret])) {
		t.Error("Secret's token does not carry its secret")
	}
	if sec.Labels[kw.LabelManagedBy] != "keyward" || sec.Labels[kw.LabelApiKey] != "reader" ||
		sec.Annotations[kw.AnnotationKeyID] != key.Status.KeyID {
		t.Errorf("Secret labels %v annotations %v", sec.Labels, sec.Annotations)
	}
	for _, o := range []metav1.Object{sec, rec} {
		if ref := metav1.GetControllerOf(o); ref == nil || ref.UID != key.UID {
			t.Errorf("%s is not controlled by its ApiKey: %v", o.GetName(), o.GetOwnerReferences())
		}
	}
	if strings.Contains(fmt.Sprintf("%+v", rec), string(sec.Data[kw.SecretKeySecret])) {
		t.Error("the record holds the plaintext secret")
	}
	eventually(t, 5*time.Second, "an Issued event", func() (bool, string) {
		for _, e := range listEvents(t, ns) {
			if e.Reason == kw.ReasonIssued && e.Regarding.Name == "reader" {
				return true, ""
			}
		}
		return false, "none"
	})
}

func TestSteadyStateWritesNothing(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	create(t, newKey(ns, "steady"))
	waitReason(t, ns, "steady", kw.ReasonIssued)
	holdStill(t, 10*time.Second, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "steady"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "steady-apikey"}},
		&kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "steady"}})
}

func TestForeignSecretIsNeverOverwritten(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db-password"},
		StringData: map[string]string{"password": "hunter2"},
	}
	create(t, foreign)
	startManager(t, ns)
	key := newKey(ns, "grabby")
	key.Spec.SecretName = "db-password"
	create(t, key)
	got := waitReason(t, ns, "grabby", kw.ReasonSecretConflict)
	if got.Status.State != kw.StateFailed || !strings.Contains(readyCondition(got).Message, "was not created by keyward") {
		t.Fatalf("state %s, condition %+v", got.Status.State, readyCondition(got))
	}
	sec := get(t, ns, "db-password", &corev1.Secret{})
	if string(sec.Data["password"]) != "hunter2" || len(sec.Data) != 1 || len(sec.OwnerReferences) != 0 {
		t.Fatalf("foreign Secret was changed: %v %v", sec.Data, sec.OwnerReferences)
	}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "grabby"}, &kw.ApiKeyRecord{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a key was recorded although it could not be delivered: %v", err)
	}
	holdStill(t, 10*time.Second, got, sec)
}

func TestTwoApiKeysNamingOneSecret(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	first := newKey(ns, "first")
	first.Spec.SecretName = "shared"
	create(t, first)
	waitReason(t, ns, "first", kw.ReasonIssued)
	second := newKey(ns, "second")
	second.Spec.SecretName = "shared"
	create(t, second)
	got := waitReason(t, ns, "second", kw.ReasonSecretConflict)
	if !strings.Contains(readyCondition(got).Message, `holds the key of ApiKey "first"`) {
		t.Fatalf("condition %+v", readyCondition(got))
	}
	holdStill(t, 10*time.Second,
		&kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "first"}},
		&kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "second"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "shared"}})

	// When the first ApiKey is gone, the Secret is free and the second one
	// gets its own key.
	if err := k8s.Delete(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	waitReason(t, ns, "second", kw.ReasonIssued)
	verifies(t, get(t, ns, "second", &kw.ApiKeyRecord{}), get(t, ns, "shared", &corev1.Secret{}))
}

func TestDeletedSecretIsNotRegenerated(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	create(t, newKey(ns, "lost"))
	key := waitReason(t, ns, "lost", kw.ReasonIssued)
	rec := get(t, ns, "lost", &kw.ApiKeyRecord{})
	sec := get(t, ns, "lost-apikey", &corev1.Secret{})
	if err := k8s.Delete(context.Background(), sec); err != nil {
		t.Fatal(err)
	}
	got := waitReason(t, ns, "lost", kw.ReasonSecretMissing)
	if got.Status.KeyID != key.Status.KeyID || got.Status.State != kw.StateActive {
		t.Fatalf("after the Secret was deleted: key %s state %s", got.Status.KeyID, got.Status.State)
	}
	holdStill(t, 3*time.Second, rec)
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sec), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a new Secret was written: %v", err)
	}
	found := false
	for _, e := range listEvents(t, ns) {
		found = found || e.Reason == kw.ReasonSecretMissing && e.Type == corev1.EventTypeWarning
	}
	if !found {
		t.Error("no SecretMissing warning event")
	}
}

func TestArchiveRevokes(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	create(t, newKey(ns, "old"))
	key := waitReason(t, ns, "old", kw.ReasonIssued)
	patch := client.MergeFrom(key.DeepCopy())
	key.Spec.Archived = true
	if err := k8s.Patch(context.Background(), key, patch); err != nil {
		t.Fatal(err)
	}
	got := waitReason(t, ns, "old", kw.ReasonArchived)
	rec := get(t, ns, "old", &kw.ApiKeyRecord{})
	if got.Status.State != kw.StateArchived || got.Status.ArchivedAt == nil || got.Status.KeyID != key.Status.KeyID {
		t.Fatalf("status %+v", got.Status)
	}
	if !rec.Spec.Revoked || rec.Spec.RevokedAt == nil || !rec.Spec.RevokedAt.Equal(got.Status.ArchivedAt) {
		t.Fatalf("record not revoked: %+v", rec.Spec)
	}
	eventually(t, 5*time.Second, "the Secret to be deleted", func() (bool, string) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "old-apikey"}, &corev1.Secret{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	found := false
	for _, e := range listEvents(t, ns) {
		found = found || e.Reason == kw.ReasonArchived
	}
	if !found {
		t.Error("no Archived event")
	}
	holdStill(t, 3*time.Second, got, rec)
}

func TestArchivedFromTheStartIsNeverIssued(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	key := newKey(ns, "born-archived")
	key.Spec.Archived = true
	create(t, key)
	got := waitReason(t, ns, "born-archived", kw.ReasonArchived)
	if got.Status.KeyID != "" {
		t.Fatalf("an archived ApiKey got key %s", got.Status.KeyID)
	}
	for _, o := range []client.Object{&corev1.Secret{}, &kw.ApiKeyRecord{}} {
		name := map[bool]string{true: "born-archived-apikey", false: "born-archived"}[isSecret(o)]
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, o); !apierrors.IsNotFound(err) {
			t.Errorf("%T exists for an ApiKey archived from the start", o)
		}
	}
}

func isSecret(o client.Object) bool { _, ok := o.(*corev1.Secret); return ok }

func TestDeleteRevokesAtOnce(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	create(t, newKey(ns, "doomed"))
	key := waitReason(t, ns, "doomed", kw.ReasonIssued)
	if err := k8s.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	// envtest runs no garbage collector: what is gone here was removed by
	// keyward itself.
	eventually(t, 5*time.Second, "ApiKey, record and Secret to be gone", func() (bool, string) {
		var left []string
		for _, o := range []client.Object{&kw.ApiKey{}, &kw.ApiKeyRecord{}} {
			if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "doomed"}, o); !apierrors.IsNotFound(err) {
				left = append(left, fmt.Sprintf("%T", o))
			}
		}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "doomed-apikey"}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
			left = append(left, "Secret")
		}
		return len(left) == 0, strings.Join(left, ",")
	})
}

func TestExpiryRequeuesForTheMoment(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	m := startManager(t, ns)
	expires := metav1.NewTime(time.Now().Add(3 * time.Second).Truncate(time.Second))
	key := newKey(ns, "short-lived")
	key.Spec.ExpiresAt = &expires
	create(t, key)
	waitReason(t, ns, "short-lived", kw.ReasonIssued)

	// The reconcile asks to be woken exactly when the key expires.
	r := *m.rec
	now := expires.Add(-1500 * time.Millisecond)
	r.Clock = clocktesting.NewFakePassiveClock(now)
	r.Recorder = m.rec.Recorder
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(key)})
	if err != nil || res.RequeueAfter != 1500*time.Millisecond {
		t.Fatalf("Reconcile = %+v, %v; want RequeueAfter 1.5s", res, err)
	}

	got := waitReason(t, ns, "short-lived", kw.ReasonExpired)
	if got.Status.State != kw.StateExpired {
		t.Fatalf("state %s", got.Status.State)
	}
	if time.Now().Before(expires.Time) {
		t.Fatal("expired before expiresAt")
	}
	// The Secret stays: raising expiresAt brings the same key back.
	sec := get(t, ns, "short-lived-apikey", &corev1.Secret{})
	patch := client.MergeFrom(got.DeepCopy())
	later := metav1.NewTime(time.Now().Add(time.Hour))
	got.Spec.ExpiresAt = &later
	if err := k8s.Patch(context.Background(), got, patch); err != nil {
		t.Fatal(err)
	}
	back := waitReason(t, ns, "short-lived", kw.ReasonIssued)
	if back.Status.KeyID != key.Status.KeyID && back.Status.KeyID != got.Status.KeyID {
		t.Fatal("a new key was issued when expiry was extended")
	}
	verifies(t, get(t, ns, "short-lived", &kw.ApiKeyRecord{}), sec)
}

func TestLabelSelectedSecretCache(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	for i := range 20 {
		create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("unrelated-%d", i)}})
	}
	m := startManager(t, ns)
	create(t, newKey(ns, "only"))
	waitReason(t, ns, "only", kw.ReasonIssued)
	var cached corev1.SecretList
	if err := m.mgr.GetCache().List(context.Background(), &cached, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(cached.Items) != 1 || cached.Items[0].Name != "only-apikey" {
		names := []string{}
		for _, s := range cached.Items {
			names = append(names, s.Name)
		}
		t.Fatalf("controller cache holds Secrets %v; want only keyward's", names)
	}
}
