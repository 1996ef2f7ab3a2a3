package controllers

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
)

// SecretType is the type of the Secrets keyward writes.
const SecretType corev1.SecretType = "keyward.dev/api-key"

// loadRecord reads the ApiKey's record and adopts it if a restore stripped
// its owner reference. The record has the ApiKey's name, and only the
// controller writes records, so the name is what binds them.
func (r *ApiKeyReconciler) loadRecord(ctx context.Context, key *kw.ApiKey) (*kw.ApiKeyRecord, error) {
	rec := &kw.ApiKeyRecord{}
	err := r.Get(ctx, client.ObjectKeyFromObject(key), rec)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record of %s/%s: %w", key.Namespace, key.Name, err)
	}
	if err := r.adopt(ctx, key, rec); err != nil {
		return nil, fmt.Errorf("adopt record of %s/%s: %w", key.Namespace, key.Name, err)
	}
	return rec, nil
}

// loadSecret reads the Secret the ApiKey names. It returns nil when there is
// none, and also when the Secret is not keyward's to touch; then the verdict
// says SecretConflict and v.conflict is set.
//
// The cache holds Secrets' metadata only. The Secret's content is read from
// the API server only when the reconcile needs it: to rebuild a record from
// it, or to check that its token is one of the record's keys, which is done
// once per version of the Secret and of the record (tokenChecks). The
// Secret returned then carries metadata only.
func (r *ApiKeyReconciler) loadSecret(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, v *verdict) (*corev1.Secret, error) {
	m := secretMetadata()
	err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.EffectiveSecretName()}, m)
	switch {
	case apierrors.IsNotFound(err) && rec == nil && key.Status.KeyID == "":
		// A new ApiKey: issue creates its Secret, and the API server
		// refusing that (AlreadyExists) is how a foreign Secret, or one of
		// ours too new for the cache, is found; issue then reads it with
		// loadSecretLive. This saves a read for every key issued.
		return nil, nil
	case apierrors.IsNotFound(err):
		// The cache holds only keyward's Secrets: ask the API server whether
		// a foreign one stands there, or ours is too new for the cache.
		return r.loadSecretLive(ctx, key, rec, v)
	case err != nil:
		return nil, fmt.Errorf("read Secret %s/%s: %w", key.Namespace, key.EffectiveSecretName(), err)
	}
	sec := &corev1.Secret{ObjectMeta: m.ObjectMeta}
	if rec == nil || !rotationInFlight(key, rec, sec) && !r.tokens.checked(key, sec, rec) {
		return r.loadSecretLive(ctx, key, rec, v)
	}
	return r.examineSecret(ctx, key, rec, sec, v)
}

// loadSecretLive is loadSecret reading from the API server, not the cache.
func (r *ApiKeyReconciler) loadSecretLive(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, v *verdict) (*corev1.Secret, error) {
	sec := &corev1.Secret{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.EffectiveSecretName()}, sec)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Secret %s/%s: %w", key.Namespace, key.EffectiveSecretName(), err)
	}
	return r.examineSecret(ctx, key, rec, sec, v)
}

// examineSecret decides whether sec is the ApiKey's (adopting it) or not
// keyward's to touch (nil, with the verdict saying why).
func (r *ApiKeyReconciler) examineSecret(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, sec *corev1.Secret, v *verdict) (*corev1.Secret, error) {
	name := types.NamespacedName{Namespace: sec.Namespace, Name: sec.Name}
	if why := r.foreign(key, rec, sec); why != "" {
		v.conflict = true
		v.set(kw.StateFailed, kw.ReasonSecretConflict, "Secret %s %s; keyward never overwrites it. "+
			"Delete or rename that Secret, or create a new ApiKey with another spec.secretName", name.Name, why)
		return nil, nil
	}
	if rec == nil {
		// No record: this Secret may be the only trace of a key (a restore,
		// a crash between two writes), and recordFromSecret will record
		// what it holds, only when its token's key ID is the one annotated
		// here. Labels prove nothing: a key ID another ApiKey holds is
		// never taken, and nothing is written, not even an owner
		// reference.
		if held, err := r.heldElsewhere(ctx, key, sec, v); held || err != nil {
			return nil, err
		}
	}
	if err := r.adopt(ctx, key, sec); err != nil {
		return nil, fmt.Errorf("adopt Secret %s: %w", name, err)
	}
	return sec, nil
}

// foreign says why a Secret is not the ApiKey's, or "" when it is: keyward
// wrote it for this ApiKey (its labels say so), no one else controls it, and,
// when there is a record, its token is one of the record's keys, key ID and
// digest both: the record is the truth, labels and annotations are
// user-writable and prove nothing.
func (r *ApiKeyReconciler) foreign(key *kw.ApiKey, rec *kw.ApiKeyRecord, sec *corev1.Secret) string {
	if sec.Labels[kw.LabelManagedBy] != kw.ManagedByValue {
		return "was not created by keyward"
	}
	if owner := sec.Labels[kw.LabelApiKey]; owner != key.Name {
		return fmt.Sprintf("holds the key of ApiKey %q", owner)
	}
	if ref := metav1.GetControllerOf(sec); ref != nil && ref.UID != key.UID &&
		(ref.Kind != "ApiKey" || ref.Name != key.Name) {
		return fmt.Sprintf("is controlled by %s %q", ref.Kind, ref.Name)
	}
	if rec == nil || rotationInFlight(key, rec, sec) || r.tokens.checked(key, sec, rec) {
		return ""
	}
	id, secret, err := keys.Parse(string(sec.Data[kw.SecretKeyToken]))
	if err != nil || id != sec.Annotations[kw.AnnotationKeyID] {
		return "holds no valid token for its key-id annotation"
	}
	digest := keys.Digest(secret)
	for _, k := range rec.Spec.Keys {
		if k.KeyID == id && subtle.ConstantTimeCompare([]byte(k.Digest), []byte(digest)) == 1 {
			r.tokens.pass(key, sec, rec)
			return ""
		}
	}
	return fmt.Sprintf("holds a key (%s) that is not one of this ApiKey's keys", id)
}

// ownsSecret reports whether keyward may delete the Secret for this ApiKey.
func (r *ApiKeyReconciler) ownsSecret(key *kw.ApiKey, sec *corev1.Secret) bool {
	ref := metav1.GetControllerOf(sec)
	return sec.Labels[kw.LabelManagedBy] == kw.ManagedByValue && sec.Labels[kw.LabelApiKey] == key.Name &&
		(ref == nil || ref.UID == key.UID || (ref.Kind == "ApiKey" && ref.Name == key.Name))
}

// adopt makes the ApiKey the controller of obj, replacing a reference to an
// earlier ApiKey of the same name (a restore gives the ApiKey a new UID and
// strips owner references).
func (r *ApiKeyReconciler) adopt(ctx context.Context, key *kw.ApiKey, obj client.Object) error {
	if ref := metav1.GetControllerOf(obj); ref != nil && ref.UID == key.UID {
		return nil
	}
	patch := client.MergeFromWithOptions(obj.DeepCopyObject().(client.Object), client.MergeFromWithOptimisticLock{})
	var refs []metav1.OwnerReference
	for _, ref := range obj.GetOwnerReferences() {
		if ref.Kind != "ApiKey" || ref.APIVersion != kw.GroupVersion.String() {
			refs = append(refs, ref)
		}
	}
	obj.SetOwnerReferences(refs)
	if err := controllerutil.SetControllerReference(key, obj, r.Scheme()); err != nil {
		return err
	}
	if err := r.Patch(ctx, obj, patch, client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	log.FromContext(ctx).Info("adopted", "kind", fmt.Sprintf("%T", obj), "name", obj.GetName())
	return nil
}

// ensureRecord makes sure the ApiKey has a record: it keeps the one it has,
// rebuilds a lost one from the Secret, or issues a first key. It never
// issues a key when one was issued before.
func (r *ApiKeyReconciler) ensureRecord(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, sec *corev1.Secret, v *verdict) (*kw.ApiKeyRecord, error) {
	switch {
	case rec != nil:
		v.record = rec
		holder, id, err := r.olderHolder(ctx, key, rec)
		if err != nil {
			return nil, err
		}
		switch {
		case holder != nil:
			r.keyIDConflict(key, id, holder, v, "Delete this ApiKey and create a new one to get a key of its own")
		case v.conflict:
			v.state = kw.StateActive
		case sec == nil:
			v.set(kw.StateActive, kw.ReasonSecretMissing, "the Secret %s that held key %s is gone; the key still works "+
				"for clients that have it, and keyward does not issue a new key by itself: archive this ApiKey and "+
				"create a new one to get a new key", key.EffectiveSecretName(), rec.Current().KeyID)
		default:
			v.set(kw.StateActive, kw.ReasonIssued, "key %s is in Secret %s", rec.Current().KeyID, sec.Name)
		}
		return rec, nil
	case v.conflict, key.Spec.Archived:
		return nil, nil
	case sec != nil:
		return r.recordFromSecret(ctx, key, sec, v)
	default:
		return r.issue(ctx, key, v)
	}
}

// issue issues the ApiKey's first key. The Secret is written before the
// record: should the process die between the two, the next reconcile
// rebuilds the record from the Secret instead of losing the plaintext.
//
// It takes the cache's word that the ApiKey has no record, without asking
// the API server (a read for every key issued). Where the cache is behind a
// record written moments ago, the API server refuses the record, and the
// Secret written here holds a key that no record has, which no endpoint
// accepts: issue deletes that Secret again (withdraw) and waits for the
// cache. That happens only when the Secret of a key issued moments ago is
// gone too (else creating the Secret is refused first), that is, when
// someone deleted it.
func (r *ApiKeyReconciler) issue(ctx context.Context, key *kw.ApiKey, v *verdict) (*kw.ApiKeyRecord, error) {
	k, err := keys.Generate()
	if err != nil {
		return nil, fmt.Errorf("issue key for %s/%s: %w", key.Namespace, key.Name, err)
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   key.Namespace,
			Name:        key.EffectiveSecretName(),
			Labels:      map[string]string{kw.LabelManagedBy: kw.ManagedByValue, kw.LabelApiKey: key.Name},
			Annotations: map[string]string{kw.AnnotationKeyID: k.ID, kw.AnnotationGeneration: strconv.FormatInt(key.DesiredGeneration(), 10)},
		},
		Type: SecretType,
		Data: map[string][]byte{
			kw.SecretKeyToken:    []byte(k.Token()),
			kw.SecretKeyKeyID:    []byte(k.ID),
			kw.SecretKeySecret:   []byte(k.Secret),
			kw.SecretKeyEndpoint: []byte(r.Endpoint),
		},
	}
	if err := controllerutil.SetControllerReference(key, sec, r.Scheme()); err != nil {
		return nil, err
	}
	if err := r.Create(ctx, sec, client.FieldOwner(FieldOwner)); apierrors.IsAlreadyExists(err) {
		// A Secret stands there that the cache does not hold (loadSecret
		// did not ask the API server for a new ApiKey): a foreign one, or
		// ours too new for the cache. Judge it as loadSecret would have;
		// the key drawn above was written nowhere and is dropped.
		found, err := r.loadSecretLive(ctx, key, nil, v)
		switch {
		case err != nil || v.conflict:
			return nil, err
		case found != nil:
			return r.recordFromSecret(ctx, key, found, v)
		}
		return nil, fmt.Errorf("Secret %s/%s existed and is gone again; retrying", sec.Namespace, sec.Name)
	} else if err != nil {
		return nil, fmt.Errorf("write Secret %s/%s for key %s: %w", sec.Namespace, sec.Name, k.ID, err)
	}
	if r.crash(PointSecretWritten) {
		return nil, errCrashed
	}
	rec, err := r.createRecord(ctx, key, kw.RecordedKey{KeyID: k.ID, Digest: k.Digest(), IssuedAt: metav1.Now(), Generation: key.DesiredGeneration()})
	if errors.Is(err, errNotCached) {
		return nil, r.withdraw(ctx, sec, k.ID, err)
	}
	if err != nil {
		return nil, err
	}
	if r.crash(PointRecordWritten) {
		return nil, errCrashed
	}
	r.tokens.pass(key, sec, rec) // both as written: the next reconcile need not read the Secret back
	log.FromContext(ctx).Info("issued key", "keyId", k.ID, "secret", sec.Name)
	r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, kw.ReasonIssued, "Issue", "issued key %s into Secret %s", k.ID, sec.Name)
	v.record = rec
	v.set(kw.StateActive, kw.ReasonIssued, "key %s is in Secret %s", k.ID, sec.Name)
	return rec, nil
}

// recordFromSecret rebuilds a record from the Secret keyward wrote: the
// process died between the two writes, or a restore brought the Secret back
// without its record.
func (r *ApiKeyReconciler) recordFromSecret(ctx context.Context, key *kw.ApiKey, sec *corev1.Secret, v *verdict) (*kw.ApiKeyRecord, error) {
	id, secret, err := keys.Parse(string(sec.Data[kw.SecretKeyToken]))
	if err != nil || id != sec.Annotations[kw.AnnotationKeyID] {
		v.conflict = true
		v.set(kw.StateFailed, kw.ReasonSecretConflict, "Secret %s is labelled as keyward's but holds no valid token "+
			"for its key-id annotation; delete it and keyward issues a new key", sec.Name)
		return nil, nil
	}
	rec, err := r.createRecord(ctx, key, kw.RecordedKey{KeyID: id, Digest: keys.Digest(secret), IssuedAt: sec.CreationTimestamp, Generation: secretGeneration(sec)})
	if err != nil {
		return nil, err
	}
	log.FromContext(ctx).Info("recorded key from its Secret", "keyId", id, "secret", sec.Name)
	v.record = rec
	v.set(kw.StateActive, kw.ReasonIssued, "key %s is in Secret %s", id, sec.Name)
	return rec, nil
}

func (r *ApiKeyReconciler) createRecord(ctx context.Context, key *kw.ApiKey, first kw.RecordedKey) (*kw.ApiKeyRecord, error) {
	rec := &kw.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: key.Namespace,
			Name:      key.Name,
			Labels:    map[string]string{kw.LabelManagedBy: kw.ManagedByValue, kw.LabelApiKey: key.Name},
		},
		Spec: kw.ApiKeyRecordSpec{Keys: []kw.RecordedKey{first}},
	}
	if err := controllerutil.SetControllerReference(key, rec, r.Scheme()); err != nil {
		return nil, err
	}
	if err := r.Create(ctx, rec, client.FieldOwner(FieldOwner)); apierrors.IsAlreadyExists(err) {
		// Only the controller writes records: the cache is behind one it
		// wrote moments ago.
		return nil, fmt.Errorf("record of %s/%s exists: %w", key.Namespace, key.Name, errNotCached)
	} else if err != nil {
		return nil, fmt.Errorf("record key %s of %s/%s: %w", first.KeyID, key.Namespace, key.Name, err)
	}
	return rec, nil
}

// withdraw deletes the Secret issue has just written, by its UID, when the
// API server refused its key's record (cause): that key is in no record and
// must not stay where workloads read it. Should the delete fail, the next
// reconcile finds a Secret whose key is not the record's and reports a
// SecretConflict, never accepting that key.
func (r *ApiKeyReconciler) withdraw(ctx context.Context, sec *corev1.Secret, keyID string, cause error) error {
	if err := r.Delete(ctx, sec, client.Preconditions{UID: &sec.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("withdraw Secret %s/%s of unrecorded key %s (%v): %w", sec.Namespace, sec.Name, keyID, cause, err)
	}
	log.FromContext(ctx).Info("withdrew a key written while the cache was behind its record", "keyId", keyID, "secret", sec.Name)
	return cause
}

// archive revokes every key of an archived ApiKey and deletes the plaintext.
// The record stays, revoked, for audit.
func (r *ApiKeyReconciler) archive(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, sec *corev1.Secret, v *verdict) error {
	if rec != nil && !rec.Spec.Revoked {
		patch := client.MergeFrom(rec.DeepCopy())
		now := metav1.NewTime(r.Clock.Now())
		rec.Spec.Revoked, rec.Spec.RevokedAt = true, &now
		if err := r.Patch(ctx, rec, patch, client.FieldOwner(FieldOwner)); err != nil {
			return fmt.Errorf("revoke record of %s/%s: %w", key.Namespace, key.Name, err)
		}
		log.FromContext(ctx).Info("archived key", "keyId", rec.Current().KeyID)
		r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, kw.ReasonArchived, "Archive",
			"archived key %s; it no longer verifies", rec.Current().KeyID)
	}
	if sec != nil {
		err := r.Delete(ctx, sec, client.Preconditions{UID: &sec.UID})
		if client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete Secret %s/%s of archived key: %w", sec.Namespace, sec.Name, err)
		}
	}
	if !v.conflict {
		v.set(kw.StateArchived, kw.ReasonArchived, "the key was archived and no longer verifies; the ApiKey stays for audit")
	} else {
		v.state = kw.StateArchived
	}
	return nil
}

// tokenChecks remembers, for each ApiKey, the version of its Secret found to hold one of
// its record's keys, and the version of the record it was checked
// against: as long as neither changes, the check holds, and the Secret's
// content need not be read again. A few dozen bytes a key, and no key
// material: the controller keeps no plaintext between reconciles.
type tokenChecks struct {
	mu sync.Mutex
	m  map[types.NamespacedName]tokenCheck
}

type tokenCheck struct {
	secretUID, recordUID types.UID
	secretRV, recordRV   string
}

func checkOf(sec *corev1.Secret, rec *kw.ApiKeyRecord) tokenCheck {
	return tokenCheck{secretUID: sec.UID, recordUID: rec.UID, secretRV: sec.ResourceVersion, recordRV: rec.ResourceVersion}
}

// checked reports whether this version of sec was found to hold a key of
// this version of rec.
func (t *tokenChecks) checked(key *kw.ApiKey, sec *corev1.Secret, rec *kw.ApiKeyRecord) bool {
	if t == nil || sec.ResourceVersion == "" || rec.ResourceVersion == "" {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.m[client.ObjectKeyFromObject(key)]
	return ok && c == checkOf(sec, rec)
}

// pass records that sec holds a key of rec.
func (t *tokenChecks) pass(key *kw.ApiKey, sec *corev1.Secret, rec *kw.ApiKeyRecord) {
	if t == nil || sec.ResourceVersion == "" || rec.ResourceVersion == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[types.NamespacedName]tokenCheck{}
	}
	t.m[client.ObjectKeyFromObject(key)] = checkOf(sec, rec)
}

// forget drops what is known of an ApiKey's Secret (the ApiKey is gone).
func (t *tokenChecks) forget(nn types.NamespacedName) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, nn)
}

// len is the number of ApiKeys remembered.
func (t *tokenChecks) len() int {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
