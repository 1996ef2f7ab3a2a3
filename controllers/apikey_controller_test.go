package controllers

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

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

// TestIssueOnACacheBehindItsRecordWithdrawsTheKey: issue takes the
// cache's word that an ApiKey has no record. Where the cache is behind a
// record (written moments ago) and the key's Secret was deleted meanwhile,
// the key issue draws is refused a record by the API server: the Secret
// holding it is deleted again, the record keeps its one key, and once the
// cache catches up the ApiKey reports its Secret missing, as it does
// without the lag (TestDeletedSecretIsNotRegenerated).
func TestIssueOnACacheBehindItsRecordWithdrawsTheKey(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	behind := &recordsBehind{}
	startManager(t, ns, func(r *ApiKeyReconciler) { behind.Client = r.Client; r.Client = behind })
	create(t, newKey(ns, "behind"))
	key := waitReason(t, ns, "behind", kw.ReasonIssued)
	rec := get(t, ns, "behind", &kw.ApiKeyRecord{})
	sec := get(t, ns, "behind-apikey", &corev1.Secret{})

	behind.on.Store(true)
	if err := k8s.Delete(context.Background(), sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a key drawn on the lagging cache", func() (bool, string) {
		return behind.written.Load() > 0, "no Secret written"
	})
	time.Sleep(2500 * time.Millisecond) // the controller retries every second while its cache is behind
	behind.on.Store(false)

	got := waitReason(t, ns, "behind", kw.ReasonSecretMissing)
	if got.Status.KeyID != key.Status.KeyID {
		t.Fatalf("status names key %s, was %s", got.Status.KeyID, key.Status.KeyID)
	}
	if w, d := behind.written.Load(), behind.withdrawn.Load(); w != d {
		t.Fatalf("%d Secrets written on the lagging cache, %d withdrawn", w, d)
	}
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sec), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a Secret stands with a key no record has: %v", err)
	}
	after := get(t, ns, "behind", &kw.ApiKeyRecord{})
	if after.ResourceVersion != rec.ResourceVersion || len(after.Spec.Keys) != 1 {
		t.Fatalf("the record changed: %+v", after.Spec)
	}
	for _, e := range listEvents(t, ns) {
		if e.Reason == kw.ReasonIssued && !strings.Contains(e.Note, key.Status.KeyID) {
			t.Errorf("an Issued event for another key: %s", e.Note)
		}
	}
}

// recordsBehind is the controller's client with, while on is set, a cache
// that has not yet seen the ApiKey's record. It counts the Secrets the
// controller creates meanwhile and those it deletes again.
type recordsBehind struct {
	client.Client
	on                 atomic.Bool
	written, withdrawn atomic.Int64
	uids               sync.Map // of the Secrets written while on
}

func (c *recordsBehind) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*kw.ApiKeyRecord); ok && c.on.Load() {
		return apierrors.NewNotFound(kw.GroupVersion.WithResource("apikeyrecords").GroupResource(), key.Name)
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c *recordsBehind) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	err := c.Client.Create(ctx, obj, opts...)
	if s, ok := obj.(*corev1.Secret); ok && err == nil && c.on.Load() {
		remember(s) // the withdrawn key may appear in no log or Event either
		c.uids.Store(s.UID, true)
		c.written.Add(1)
	}
	return err
}

func (c *recordsBehind) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	err := c.Client.Delete(ctx, obj, opts...)
	if _, ours := c.uids.Load(obj.GetUID()); ours && isSecret(obj) && err == nil {
		c.withdrawn.Add(1)
	}
	return err
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
	// The reconcile below reads the manager's cache: until that shows the
	// controller's own status write, it would wait for it.
	m.waitCached(t, waitReason(t, ns, "short-lived", kw.ReasonIssued))

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

// TestBulkIssuancePatchesEachApiKeyOnce: ApiKeys created at once (a GitOps
// sync) each get their finalizer in one patch and their status in one
// patch. Issuing a key wakes its ApiKey again at once (its Secret, record
// and status are written), often before the cache shows the controller's
// own writes: here the cache serves each ApiKey as it was before its
// finalizer patch to the next reconcile, and as it was before its status
// patch to the one after. Those reconciles must wait for the cache, not
// send a stale finalizer patch the API server refuses (a request wasted,
// and a failed reconcile for each key, which KeywardReconcileErrors
// counts), nor write the status again from a copy that lacks it (a
// request and a write wasted, with a new lastTransitionTime).
func TestBulkIssuancePatchesEachApiKeyOnce(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	patches := &apiKeyPatches{before: map[string][]*kw.ApiKey{}}
	startManager(t, ns, func(r *ApiKeyReconciler) { patches.Client = r.Client; r.Client = patches })
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			create(t, newKey(ns, fmt.Sprintf("bulk-%03d", i)))
		}()
	}
	wg.Wait()
	eventually(t, 30*time.Second, "every ApiKey Active", func() (bool, string) {
		var list kw.ApiKeyList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		active := 0
		for _, k := range list.Items {
			if k.Status.State == kw.StateActive && slices.Contains(k.Finalizers, kw.Finalizer) {
				active++
			}
		}
		return active == n, fmt.Sprintf("%d of %d Active", active, n)
	})
	// Each key's own writes wake it twice more, maybe after it turned
	// Active.
	eventually(t, 10*time.Second, "every ApiKey read twice a version behind", func() (bool, string) {
		s := patches.stale.Load()
		return s == 2*n, fmt.Sprintf("%d of %d", s, 2*n)
	})
	time.Sleep(time.Second) // and whatever those reconciles send is sent
	if sent, refused := patches.sent.Load(), patches.refused.Load(); sent != n || refused != 0 {
		t.Errorf("%d ApiKeys patched %d times, %d patches refused as stale", n, sent, refused)
	}
	if sent := patches.statusSent.Load(); sent != n {
		t.Errorf("%d ApiKeys' status patched %d times", n, sent)
	}
	if k := countLines(logs.String(), "Reconciler error", ns); k != 0 {
		t.Errorf("%d reconciles failed", k)
	}
}

// TestExpiryAnnouncedOnce: the reconcile that a key's own Expired status
// wakes may read a copy that does not show that status yet (here the cache
// serves it as it was before the patch). It must wait for the cache, not
// write the status again and announce the expiry a second time.
func TestExpiryAnnouncedOnce(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	patches := &apiKeyPatches{before: map[string][]*kw.ApiKey{}, statusLag: 2}
	startManager(t, ns, func(r *ApiKeyReconciler) { patches.Client = r.Client; r.Client = patches })
	key := newKey(ns, "brief")
	expires := metav1.NewTime(time.Now().Add(4 * time.Second).Truncate(time.Second))
	key.Spec.ExpiresAt = &expires
	create(t, key)
	waitReason(t, ns, "brief", kw.ReasonIssued)
	waitReason(t, ns, "brief", kw.ReasonExpired)
	// The finalizer's lag and the Expired status's.
	eventually(t, 10*time.Second, "the key read twice a version behind", func() (bool, string) {
		s := patches.stale.Load()
		return s == 2, fmt.Sprint(s, " status patches ", patches.statusSent.Load())
	})
	time.Sleep(time.Second) // and whatever those reconciles send is sent
	// A repeated Event is one object whose series counts the repeats.
	expired := int32(0)
	for _, e := range listEvents(t, ns) {
		if e.Regarding.Name == "brief" && e.Reason == kw.ReasonExpired {
			expired++
			if e.Series != nil {
				expired += e.Series.Count - 1
			}
		}
	}
	if expired != 1 {
		t.Errorf("the expiry announced %d times, want once", expired)
	}
	if sent := patches.statusSent.Load(); sent != 2 {
		t.Errorf("status patched %d times, want 2 (issued, expired)", sent)
	}
}

// apiKeyPatches is the controller's client with a cache that lags behind
// two of the controller's own writes of each ApiKey: it serves the ApiKey
// as it was before its first patch to the first read after that patch,
// and as it was before its first status patch (or the statusLag-th) to the
// read after that. It counts the patches of ApiKeys, those the API server refused as
// stale, and the patches of their status.
type apiKeyPatches struct {
	client.Client
	// statusLag is which of an ApiKey's status patches lags (0: the first).
	statusLag int

	mu     sync.Mutex
	before map[string][]*kw.ApiKey // name: versions to serve, in order
	served map[string]int          // kind/name: patches seen
	read   map[string]*kw.ApiKey   // name: the copy last read

	sent, refused, statusSent, stale atomic.Int64
}

func (c *apiKeyPatches) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	k, ok := obj.(*kw.ApiKey)
	if !ok {
		return c.Client.Get(ctx, key, obj, opts...)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if queue := c.before[key.Name]; len(queue) > 0 {
		queue[0].DeepCopyInto(k)
		c.before[key.Name] = queue[1:]
		c.stale.Add(1)
	} else if err := c.Client.Get(ctx, key, obj, opts...); err != nil {
		return err
	}
	if c.read == nil {
		c.read = map[string]*kw.ApiKey{}
	}
	c.read[key.Name] = k.DeepCopy()
	return nil
}

// lagged remembers old, the ApiKey before a write of the given kind, to be
// served once if it is the nth write of that kind.
func (c *apiKeyPatches) lagged(kind string, nth int, old *kw.ApiKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.served == nil {
		c.served = map[string]int{}
	}
	if c.served[kind+"/"+old.Name]++; c.served[kind+"/"+old.Name] == nth {
		c.before[old.Name] = append(c.before[old.Name], old)
	}
}

func (c *apiKeyPatches) Patch(ctx context.Context, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
	k, ok := obj.(*kw.ApiKey)
	if !ok {
		return c.Client.Patch(ctx, obj, p, opts...)
	}
	old := k.DeepCopy()
	controllerutil.RemoveFinalizer(old, kw.Finalizer)
	err := c.Client.Patch(ctx, obj, p, opts...)
	c.sent.Add(1)
	if apierrors.IsConflict(err) {
		c.refused.Add(1)
	}
	if err == nil {
		c.lagged("patch", 1, old)
	}
	return err
}

func (c *apiKeyPatches) Status() client.SubResourceWriter {
	return apiKeyStatusPatches{c.Client.Status(), c}
}

type apiKeyStatusPatches struct {
	client.SubResourceWriter
	c *apiKeyPatches
}

func (w apiKeyStatusPatches) Patch(ctx context.Context, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
	k, ok := obj.(*kw.ApiKey)
	if !ok {
		return w.SubResourceWriter.Patch(ctx, obj, p, opts...)
	}
	old := k.DeepCopy()
	err := w.SubResourceWriter.Patch(ctx, obj, p, opts...)
	w.c.statusSent.Add(1)
	if err == nil {
		// The patch was computed from the copy the reconcile read: what
		// it changed is what that copy's status lacked.
		w.c.mu.Lock()
		if r, ok := w.c.read[k.Name]; ok {
			r.Status.DeepCopyInto(&old.Status)
		}
		w.c.mu.Unlock()
		w.c.lagged("status", cmp.Or(w.c.statusLag, 1), old)
	}
	return err
}

// TestOwnWrites: a write is waited for while the cache serves an older
// version, for ownWriteTTL at most, and forgotten once the cache shows it
// or a later version; expired entries are dropped once there are many, at
// most once a TTL.
func TestOwnWrites(t *testing.T) {
	var w ownWrites
	t0 := time.Unix(1e9, 0)
	at := func(uid types.UID, rv string) *kw.ApiKey {
		return &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{UID: uid, ResourceVersion: rv}}
	}
	w.wrote(at("a", "120"), t0)
	if !w.behind(at("a", "99"), t0.Add(ownWriteTTL-time.Nanosecond)) || w.behind(at("b", "99"), t0) {
		t.Fatal("behind is wrong about a's older version or about b")
	}
	if w.behind(at("a", "99"), t0.Add(ownWriteTTL)) || len(w.m) != 0 {
		t.Fatal("a's write is waited for after its TTL")
	}
	for _, rv := range []string{"120", "1000"} {
		w.wrote(at("a", "120"), t0)
		if w.behind(at("a", rv), t0) || w.behind(at("a", "119"), t0) {
			t.Fatalf("the cache showed version %s, and a's write is still waited for", rv)
		}
	}
	w.wrote(at("a", "120"), t0)
	if w.forget("a"); w.behind(at("a", "99"), t0) {
		t.Fatal("a forgotten write is still waited for")
	}
	w.wrote(at("a", "120"), t0)
	if w.behind(at("a", "not-a-number"), t0) || len(w.m) != 0 {
		t.Fatal("a version that does not compare is taken as behind, or kept")
	}
	for i := range 1100 {
		w.wrote(at(types.UID(fmt.Sprint(i)), "5"), t0)
	}
	later := t0.Add(ownWriteTTL)
	w.wrote(at("new", "7"), later)
	if len(w.m) != 1 || !w.behind(at("new", "6"), later) {
		t.Fatalf("%d entries after a prune, want only the new one", len(w.m))
	}
	for i := range 1100 {
		w.wrote(at(types.UID(fmt.Sprint(i)), "5"), later)
	}
	if w.wrote(at("newer", "8"), later.Add(time.Second)); len(w.m) != 1102 {
		t.Fatalf("%d entries: pruned again within a TTL", len(w.m))
	}
	var none *ownWrites // a reconciler not set up by SetupWithManager
	none.wrote(at("a", "120"), t0)
	none.forget("a")
	if none.behind(at("a", "99"), t0) {
		t.Fatal("a nil memory remembers")
	}
}
