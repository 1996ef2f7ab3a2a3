// Package controllers reconciles ApiKeys: it issues keys, records their
// hashes, delivers the plaintext once into a Secret, and archives, expires
// and revokes them.
package controllers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/policy"
)

// FieldOwner is the field manager of every write the controller makes.
const FieldOwner = "keyward-controller"

// secretNameIndex indexes ApiKeys by the Secret they name in
// spec.secretName, so a change to a Secret wakes every ApiKey that wants it
// (including one in conflict). An ApiKey that names none wants
// NAME-apikey, which apiKeysForSecret finds from the Secret's name: only
// the few ApiKeys with a Secret name of their own take room in the index
// (a set of one, about 300 bytes in each of the index's two maps, for
// every ApiKey otherwise).
const secretNameIndex = "keyward.dev/secret-name"

// errCrashed ends a reconcile at an injected crash point (tests only).
var errCrashed = errors.New("crash injected")

// errNotCached ends a reconcile that ran on a cache older than the
// controller's own last writes (the record it wrote moments ago is not in
// it yet). Nothing is written, not even status: a status computed from
// that cache would set an issued key back to Pending. The record's watch
// event reconciles the ApiKey again; it is not a failure (it would count
// as a reconcile error and trip KeywardReconcileErrors during every bulk
// issuance).
var errNotCached = errors.New("the cache has not caught up with the controller's own writes")

// ApiKeyReconciler reconciles ApiKey objects.
type ApiKeyReconciler struct {
	client.Client
	// APIReader reads past the label-selected Secret cache, to tell a
	// foreign Secret from a missing one.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Endpoint is the gateway URL written into Secrets and status.
	Endpoint string
	Clock    clock.PassiveClock
	// CrashAt, when set, is asked after each write; returning true ends the
	// reconcile on the spot, as if the process had died there (tests only).
	CrashAt func(point string) bool
	// Concurrency is how many ApiKeys are reconciled at once (default
	// DefaultConcurrency); one ApiKey is never reconciled twice at once.
	Concurrency int
	// RateLimiter, when set, replaces controller-runtime's retry backoff
	// (tests that fail many reconciles on purpose).
	RateLimiter workqueue.TypedRateLimiter[reconcile.Request]

	// tokens is set by SetupWithManager.
	tokens *tokenChecks
	// written: this process's last write to each ApiKey, until the cache
	// shows it; set by SetupWithManager.
	written *ownWrites
}

// DefaultConcurrency: a reconcile mostly waits for the API server (about
// six requests to issue a key, each tens of milliseconds when the API
// server is busy), so many run at once even on one core. make bench,
// 5,000 ApiKeys created at once: 1 at a time with client-go's limits
// issued 10 keys/s, 16 issued 72, 64 issued 139 (of the 287 the API server
// took alone); docs/benchmarks.md has the later figures.
const DefaultConcurrency = 64

// Crash points, in the order a first issue passes them.
const (
	PointSecretWritten = "secret-written"
	PointRecordWritten = "record-written"
	// A rotation's writes: the Secret replaced, the record extended.
	PointRotationSecretWritten = "rotation-secret-written"
	PointRotationRecordWritten = "rotation-record-written"
)

// +kubebuilder:rbac:groups=keyward.dev,resources=apikeys,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=keyward.dev,resources=apikeys/status,verbs=get;patch
// +kubebuilder:rbac:groups=keyward.dev,resources=apikeys/finalizers,verbs=update
// +kubebuilder:rbac:groups=keyward.dev,resources=apikeyrecords,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=keyward.dev,resources=apikeypolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch,namespace=system

// Reconcile brings one ApiKey to its declared state.
func (r *ApiKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, err error) {
	key := &kw.ApiKey{}
	if err := r.Get(ctx, req.NamespacedName, key); err != nil {
		if apierrors.IsNotFound(err) {
			r.tokens.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !key.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.revokeDeleted(ctx, key)
	}
	if r.written.behind(key, r.Clock.Now()) {
		return waitForCache(ctx), nil
	}
	if err := r.ensureFinalizer(ctx, key); errors.Is(err, errNotCached) {
		return waitForCache(ctx), nil
	} else if err != nil {
		return ctrl.Result{}, err
	}

	before := key.DeepCopy()
	v := &verdict{}
	defer func() {
		if errors.Is(err, errCrashed) {
			return
		}
		if errors.Is(err, errNotCached) {
			result, err = waitForCache(ctx), nil
			return
		}
		if perr := r.patchStatus(ctx, before, key, v); perr != nil && err == nil {
			err = perr
		}
	}()

	rec, err := r.loadRecord(ctx, key)
	if err != nil {
		return ctrl.Result{}, err
	}
	sec, err := r.loadSecret(ctx, key, rec, v)
	if err != nil {
		return ctrl.Result{}, err
	}
	if rec, err = r.ensureRecord(ctx, key, rec, sec, v); err != nil {
		return ctrl.Result{}, err
	}
	if key.Spec.Archived {
		return ctrl.Result{}, r.archive(ctx, key, rec, sec, v)
	}
	if v.conflict || rec == nil {
		return r.expire(key, v), nil
	}
	if rec, err = r.rotate(ctx, key, rec, v); err != nil {
		return ctrl.Result{}, err
	}
	v.record = rec
	if err := r.pruneRevoked(ctx, key, rec); err != nil {
		return ctrl.Result{}, err
	}
	due, err := r.scheduleRotation(ctx, key, rec)
	if err != nil {
		return ctrl.Result{}, err
	}
	if v.reason == kw.ReasonIssued {
		if err := r.allowedScopes(ctx, key, v); err != nil {
			return ctrl.Result{}, err
		}
	}
	result = r.expire(key, v)
	for _, d := range []time.Duration{due, nextRevocation(rec, r.Clock.Now())} {
		if d > 0 && (result.RequeueAfter == 0 || d < result.RequeueAfter) {
			result.RequeueAfter = d
		}
	}
	return result, nil
}

// waitForCache ends a reconcile that found the cache behind the
// controller's own writes (errNotCached): the watch event of that write
// wakes the ApiKey again, and a second later at the latest.
func waitForCache(ctx context.Context) ctrl.Result {
	log.FromContext(ctx).V(1).Info("cache behind the controller's own writes; waiting for it")
	return ctrl.Result{RequeueAfter: time.Second}
}

// verdict is what a reconcile concluded; patchStatus turns it into status.
type verdict struct {
	record *kw.ApiKeyRecord
	// conflict: the Secret the ApiKey names is not keyward's to write.
	conflict bool
	state    kw.KeyState
	reason   string
	message  string
}

func (v *verdict) set(state kw.KeyState, reason, format string, args ...any) {
	v.state, v.reason, v.message = state, reason, fmt.Sprintf(format, args...)
}

// ensureFinalizer makes sure a deleted ApiKey is revoked before it is gone.
// Its patch carries the resourceVersion it was computed from: if the copy
// the cache served is not the ApiKey's latest (someone wrote it since, or
// the controller's own write is older than ownWriteTTL), the API server
// refuses it, and the reconcile waits for the cache (errNotCached).
func (r *ApiKeyReconciler) ensureFinalizer(ctx context.Context, key *kw.ApiKey) error {
	if controllerutil.ContainsFinalizer(key, kw.Finalizer) {
		return nil
	}
	patch := client.MergeFromWithOptions(key.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(key, kw.Finalizer)
	err := r.Patch(ctx, key, patch, client.FieldOwner(FieldOwner))
	if apierrors.IsConflict(err) {
		return fmt.Errorf("add finalizer to %s/%s: %w", key.Namespace, key.Name, errNotCached)
	}
	if err != nil {
		return fmt.Errorf("add finalizer to %s/%s: %w", key.Namespace, key.Name, err)
	}
	r.written.wrote(key, r.Clock.Now())
	return nil
}

// ownWriteTTL is how long a reconcile waits for the cache to show the
// controller's own last write to an ApiKey. After that it goes on with
// what the cache serves: a finalizer patch from a stale copy is refused
// (it carries its resourceVersion), a status patch from one is sent again.
// The cache can be far behind: while 6,000 ApiKeys were created at once on
// the 2-core machine (make bench), it still served an ApiKey without the
// finalizer 13 s after the patch.
const ownWriteTTL = time.Minute

// ownWrites remembers, per ApiKey (by UID), the resourceVersion of this
// process's last write to it (its finalizer, its status) until the cache
// serves that version or a later one.
//
// Issuing a key wakes its ApiKey again at once (the Secret, the record and
// the status are written), often before the cache shows the finalizer or
// the status just written. A reconcile of such a copy would patch the
// finalizer again (refused as stale: a request wasted and a failed
// reconcile) or write the status again (a request and a write wasted, with
// a new lastTransitionTime, and an Event repeated where the state's change
// announces one). It waits for the cache instead: the watch event of the
// write wakes the ApiKey.
type ownWrites struct {
	mu     sync.Mutex
	m      map[types.UID]ownWrite
	pruned time.Time
}

type ownWrite struct {
	resourceVersion string
	at              time.Time
}

// wrote remembers key as the API server answered a write of it.
func (w *ownWrites) wrote(key *kw.ApiKey, now time.Time) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[types.UID]ownWrite{}
	}
	if len(w.m) >= 1024 && now.Sub(w.pruned) >= ownWriteTTL {
		// ApiKeys deleted before their next reconcile leave an entry;
		// at most once a TTL, so that a burst's entries are not scanned
		// on every write.
		w.pruned = now
		for u, e := range w.m {
			if now.Sub(e.at) >= ownWriteTTL {
				delete(w.m, u)
			}
		}
	}
	w.m[key.UID] = ownWrite{resourceVersion: key.ResourceVersion, at: now}
}

// forget drops what is remembered of uid: its ApiKey is gone.
func (w *ownWrites) forget(uid types.UID) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, uid)
}

// behind reports whether key, as the cache served it, predates this
// process's last write to it, made under ownWriteTTL ago. It forgets the
// write once the cache shows it, once the TTL is over, and where the two
// resourceVersions cannot be compared (an API server whose storage does not
// number them): there the API server's optimistic lock is the only guard.
func (w *ownWrites) behind(key *kw.ApiKey, now time.Time) bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.m[key.UID]
	if !ok {
		return false
	}
	if now.Sub(e.at) < ownWriteTTL {
		if c, err := resourceversion.CompareResourceVersion(key.ResourceVersion, e.resourceVersion); err == nil && c < 0 {
			return true
		}
	}
	delete(w.m, key.UID)
	return false
}

// revokeDeleted revokes a deleted ApiKey at once: garbage collection would
// remove its record and Secret too, but later, and not at all where no
// garbage collector runs.
func (r *ApiKeyReconciler) revokeDeleted(ctx context.Context, key *kw.ApiKey) error {
	if !controllerutil.ContainsFinalizer(key, kw.Finalizer) {
		return nil
	}
	rec := &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if err := r.Delete(ctx, rec); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("revoke deleted key %s/%s: %w", key.Namespace, key.Name, err)
	}
	m := secretMetadata()
	nn := types.NamespacedName{Namespace: key.Namespace, Name: key.EffectiveSecretName()}
	err := r.Get(ctx, nn, m)
	if err == nil && r.ownsSecret(key, &corev1.Secret{ObjectMeta: m.ObjectMeta}) {
		if err := r.Delete(ctx, m, client.Preconditions{UID: &m.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete Secret of deleted key %s/%s: %w", key.Namespace, key.Name, err)
		}
	} else if client.IgnoreNotFound(err) != nil {
		return err
	}
	patch := client.MergeFromWithOptions(key.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(key, kw.Finalizer)
	if err := r.Patch(ctx, key, patch, client.FieldOwner(FieldOwner)); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("remove finalizer from %s/%s: %w", key.Namespace, key.Name, err)
	}
	r.tokens.forget(client.ObjectKeyFromObject(key))
	r.written.forget(key.UID)
	log.FromContext(ctx).Info("revoked deleted key", "keyId", key.Status.KeyID)
	return nil
}

// SetupWithManager registers the reconciler and what wakes it.
func (r *ApiKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	r.tokens, r.written = &tokenChecks{}, &ownWrites{}
	err := mgr.GetFieldIndexer().IndexField(context.Background(), &kw.ApiKey{}, secretNameIndex,
		func(o client.Object) []string {
			if name := o.(*kw.ApiKey).Spec.SecretName; name != "" {
				return []string{name}
			}
			return nil
		})
	if err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &kw.ApiKeyRecord{}, keyIDIndex, recordKeyIDs); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&kw.ApiKey{}, builder.WithPredicates(notUsageOnly)).
		Owns(&kw.ApiKeyRecord{}).
		// Metadata only: what wakes an ApiKey is in a Secret's labels and
		// name, and the controller keeps no plaintext (NewClient).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.apiKeysForSecret), builder.OnlyMetadata).
		// A namespace's labels and the ApiKeyPolicies decide which
		// restricted scopes a key may hold (ScopeNotAllowed).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.apiKeysIn),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&kw.ApiKeyPolicy{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []ctrl.Request {
			return r.apiKeysIn(ctx, nil)
		})).
		Named("apikey").
		WithOptions(controller.Options{MaxConcurrentReconciles: cmp.Or(r.Concurrency, DefaultConcurrency), RateLimiter: r.RateLimiter}).
		Complete(r)
}

// notUsageOnly lets through every ApiKey event but an update that changes
// nothing but the usage figures (and quota): the collector writes those up to once a
// minute per key with traffic, and they change nothing to reconcile.
var notUsageOnly = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	old, ok1 := e.ObjectOld.(*kw.ApiKey)
	cur, ok2 := e.ObjectNew.(*kw.ApiKey)
	if !ok1 || !ok2 {
		return true
	}
	a, b := old.DeepCopy(), cur.DeepCopy()
	for _, k := range []*kw.ApiKey{a, b} {
		k.Status.Usage, k.Status.LastUsedAt, k.Status.Quota, k.ResourceVersion, k.ManagedFields = nil, nil, nil, "", nil
	}
	return !equality.Semantic.DeepEqual(a, b)
}}

// apiKeysIn wakes every ApiKey of a namespace (nil: of all namespaces).
func (r *ApiKeyReconciler) apiKeysIn(ctx context.Context, ns client.Object) []ctrl.Request {
	var list kw.ApiKeyList
	var opts []client.ListOption
	if ns != nil {
		opts = append(opts, client.InNamespace(ns.GetName()))
	}
	if err := r.List(ctx, &list, opts...); err != nil {
		return nil
	}
	reqs := make([]ctrl.Request, len(list.Items))
	for i, k := range list.Items {
		reqs[i] = ctrl.Request{NamespacedName: types.NamespacedName{Namespace: k.Namespace, Name: k.Name}}
	}
	return reqs
}

// allowedScopes sets ScopeNotAllowed when the key holds a scope that an
// ApiKeyPolicy restricts and its namespace may not grant (any more): the
// endpoint refuses that scope, the others keep working.
func (r *ApiKeyReconciler) allowedScopes(ctx context.Context, key *kw.ApiKey, v *verdict) error {
	var policies kw.ApiKeyPolicyList
	if err := r.List(ctx, &policies); err != nil || len(policies.Items) == 0 {
		return err
	}
	var ns corev1.Namespace
	if err := r.Get(ctx, client.ObjectKey{Name: key.Namespace}, &ns); err != nil {
		return fmt.Errorf("read namespace %s: %w", key.Namespace, err)
	}
	scopes := make([]string, len(key.Spec.Scopes))
	for i, s := range key.Spec.Scopes {
		scopes[i] = string(s)
	}
	denied := policy.Denied(policies.Items, ns.Labels, scopes)
	if len(denied) == 0 {
		return nil
	}
	d := denied[0]
	v.set(kw.StateActive, kw.ReasonScopeNotAllowed, "scope %s is restricted by ApiKeyPolicy %s and namespace %s may "+
		"not grant it: the endpoint refuses it (403) while the key's other scopes keep working. A cluster "+
		"administrator can allow it again (see kubectl get apikeypolicy %s -o yaml), or remove the scope",
		d.Scope, d.Policy, key.Namespace, d.Policy)
	return nil
}

// apiKeysForSecret wakes the ApiKey a Secret is labelled for, the ApiKey
// whose default Secret name it has, and every ApiKey that names it in
// spec.secretName. An ApiKey woken for nothing finds nothing to do.
func (r *ApiKeyReconciler) apiKeysForSecret(ctx context.Context, o client.Object) []ctrl.Request {
	var reqs []ctrl.Request
	if name := o.GetLabels()[kw.LabelApiKey]; name != "" {
		reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}})
	}
	if name, ok := strings.CutSuffix(o.GetName(), kw.DefaultSecretSuffix); ok && name != "" && name != o.GetLabels()[kw.LabelApiKey] {
		reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}})
	}
	var list kw.ApiKeyList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()),
		client.MatchingFields{secretNameIndex: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "list ApiKeys naming a Secret", "secret", o.GetName())
		return reqs
	}
	for i := range list.Items {
		reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

// expire marks a key Expired once spec.expiresAt has passed, and otherwise
// asks to be woken at that moment.
func (r *ApiKeyReconciler) expire(key *kw.ApiKey, v *verdict) ctrl.Result {
	if key.Spec.ExpiresAt == nil {
		return ctrl.Result{}
	}
	left := key.Spec.ExpiresAt.Sub(r.Clock.Now())
	if left > 0 {
		return ctrl.Result{RequeueAfter: left}
	}
	if v.record != nil && v.state == kw.StateActive {
		v.set(kw.StateExpired, kw.ReasonExpired,
			"the key expired at %s; raise spec.expiresAt to extend it, or archive it", key.Spec.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return ctrl.Result{}
}

// patchStatus writes the status the verdict implies, and nothing when it is
// unchanged, so a steady ApiKey is never rewritten.
func (r *ApiKeyReconciler) patchStatus(ctx context.Context, before, key *kw.ApiKey, v *verdict) error {
	st := &key.Status
	st.SecretName = key.EffectiveSecretName()
	st.Endpoint = r.Endpoint
	st.Scopes = joinScopes(key.Spec.Scopes)
	st.Limits = key.Spec.Limits.String()
	st.ObservedGeneration = key.Generation
	if cur := currentKey(v.record); cur != nil {
		st.KeyID = cur.KeyID
		st.IssuedAt = cur.IssuedAt.DeepCopy()
	}
	st.PreviousKeys = nil
	if v.record != nil && !v.record.Spec.Revoked {
		now := r.Clock.Now()
		for _, k := range v.record.Spec.Keys[1:] {
			if k.RevokesAt != nil && k.RevokesAt.After(now) {
				st.PreviousKeys = append(st.PreviousKeys, kw.PreviousKey{KeyID: k.KeyID, RevokesAt: *k.RevokesAt})
			}
		}
	}
	if v.record != nil && v.record.Spec.RevokedAt != nil {
		st.ArchivedAt = v.record.Spec.RevokedAt.DeepCopy()
	}
	if v.state == "" {
		v.set(kw.StatePending, kw.ReasonIssuing, "the key is being issued")
	}
	r.announce(key, before, v)
	st.State = v.state
	// Ready is the kstatus sense: the ApiKey is as its spec asks, a key
	// issued and delivered, or one archived or expired as the spec says.
	// kstatus reads Ready=False as still in progress, which would leave an
	// archived key pending in Flux and Argo CD for ever.
	status := metav1.ConditionFalse
	switch v.reason {
	case kw.ReasonIssued, kw.ReasonArchived, kw.ReasonExpired:
		status = metav1.ConditionTrue
	}
	setConditions(&st.Conditions, status, v.reason, v.message, key.Generation)
	if equality.Semantic.DeepEqual(before.Status, key.Status) {
		return nil
	}
	err := r.Status().Patch(ctx, key, client.MergeFrom(before), client.FieldOwner(FieldOwner))
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("patch status of %s/%s: %w", key.Namespace, key.Name, err)
	}
	if err == nil {
		r.written.wrote(key, r.Clock.Now())
	}
	return nil
}

// setConditions sets Ready and, following kstatus, Reconciling while the
// key is being issued and Stalled while it cannot proceed; each of the two
// is removed when it no longer holds.
func setConditions(conds *[]metav1.Condition, ready metav1.ConditionStatus, reason, message string, generation int64) {
	meta.SetStatusCondition(conds, metav1.Condition{
		Type: kw.ConditionReady, Status: ready, Reason: reason, Message: message, ObservedGeneration: generation,
	})
	for _, c := range []struct {
		typ   string
		holds bool
	}{
		{kw.ConditionReconciling, reason == kw.ReasonIssuing},
		{kw.ConditionStalled, kw.Stalls(reason)},
	} {
		if !c.holds {
			meta.RemoveStatusCondition(conds, c.typ)
			continue
		}
		meta.SetStatusCondition(conds, metav1.Condition{
			Type: c.typ, Status: metav1.ConditionTrue, Reason: reason, Message: message, ObservedGeneration: generation,
		})
	}
}

// announce records an Event when the key enters a state its owners should
// hear of. Issue and archive announce themselves where they happen.
func (r *ApiKeyReconciler) announce(key, before *kw.ApiKey, v *verdict) {
	old := meta.FindStatusCondition(before.Status.Conditions, kw.ConditionReady)
	if old != nil && old.Reason == v.reason {
		return
	}
	switch v.reason {
	case kw.ReasonExpired:
		r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, v.reason, "Expire", "key %s expired", key.Status.KeyID)
	case kw.ReasonSecretConflict, kw.ReasonSecretMissing, kw.ReasonKeyIdConflict:
		r.Recorder.Eventf(key, nil, corev1.EventTypeWarning, v.reason, "Deliver", "%s", v.message)
	}
}

func currentKey(rec *kw.ApiKeyRecord) *kw.RecordedKey {
	if rec == nil {
		return nil
	}
	return rec.Current()
}

func joinScopes(scopes []kw.Scope) string {
	s := make([]string, len(scopes))
	for i, sc := range scopes {
		s[i] = string(sc)
	}
	return strings.Join(s, ",")
}

func (r *ApiKeyReconciler) crash(point string) bool {
	return r.CrashAt != nil && r.CrashAt(point)
}
