package controllers

import (
	"context"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
)

// maxRecordedKeys is the record's limit (the CRD's MaxItems).
const maxRecordedKeys = 8

// secretGeneration is the rotation generation of the key a Secret holds.
func secretGeneration(sec *corev1.Secret) int64 {
	g, _ := strconv.ParseInt(sec.Annotations[kw.AnnotationGeneration], 10, 64)
	return g
}

// rotationInFlight reports whether sec holds the key of a rotation that
// was written to the Secret but not yet recorded: keyward's labels, a key
// the record lacks, and a generation above the recorded one that the spec
// asked for.
func rotationInFlight(key *kw.ApiKey, rec *kw.ApiKeyRecord, sec *corev1.Secret) bool {
	g := secretGeneration(sec)
	return rec != nil && g > rec.Current().Generation && g <= key.DesiredGeneration()
}

// rotate brings the key to the generation the spec asks for, with exactly
// one new key per step, whatever happens: the new key goes into the Secret
// first (replaced in place, so mounted volumes follow), then into the
// record beside the old one, which gets its revocation time. A crash
// between the two leaves the new key in the Secret, and the next reconcile
// records that key instead of drawing another. A raise of several
// generations at once issues one key, for the highest.
func (r *ApiKeyReconciler) rotate(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, v *verdict) (*kw.ApiKeyRecord, error) {
	want := key.DesiredGeneration()
	if rec == nil || want <= rec.Current().Generation {
		return rec, nil
	}
	// The cache may lag behind a Secret written moments ago: ask the API
	// server before drawing a key.
	live := &corev1.Secret{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.EffectiveSecretName()}, live)
	switch {
	case apierrors.IsNotFound(err):
		live = nil
	case err != nil:
		return nil, fmt.Errorf("read Secret %s/%s: %w", key.Namespace, key.EffectiveSecretName(), err)
	case rotationInFlight(key, rec, live) && r.foreign(key, nil, live) == "":
		// The Secret says a rotation was written but not recorded. Its
		// content is user-writable: a key ID another ApiKey holds is
		// never recorded from it.
		if held, err := r.heldElsewhere(ctx, key, live, v); held || err != nil {
			return rec, err
		}
		return r.recordRotation(ctx, key, rec, live, v)
	case r.foreign(key, rec, live) != "":
		return nil, fmt.Errorf("Secret %s/%s changed under the rotation; trying again", live.Namespace, live.Name)
	}

	k, err := keys.Generate()
	if err != nil {
		return nil, fmt.Errorf("rotate key of %s/%s: %w", key.Namespace, key.Name, err)
	}
	sec := live
	var before *corev1.Secret
	if live != nil {
		before = live.DeepCopy()
	}
	if sec == nil {
		// The Secret was deleted: a rotation is the explicit request that
		// may issue a new key into a new one.
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.EffectiveSecretName()}, Type: SecretType}
		if err := controllerutil.SetControllerReference(key, sec, r.Scheme()); err != nil {
			return nil, err
		}
	}
	fillSecret(sec, key, k, want, r.Endpoint)
	if live == nil {
		err = r.Create(ctx, sec, client.FieldOwner(FieldOwner))
	} else {
		// Against the resourceVersion read: a Secret changed since then is
		// a conflict, and the reconcile starts over.
		err = r.Patch(ctx, sec, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner))
	}
	if err != nil {
		return nil, fmt.Errorf("write rotated key %s into Secret %s/%s: %w", k.ID, sec.Namespace, sec.Name, err)
	}
	if r.crash(PointRotationSecretWritten) {
		return nil, errCrashed
	}
	rec, err = r.recordRotation(ctx, key, rec, sec, v)
	if err != nil {
		return nil, err
	}
	r.tokens.pass(key, sec, rec)
	if r.crash(PointRotationRecordWritten) {
		return nil, errCrashed
	}
	return rec, nil
}

// fillSecret writes key k of generation gen into sec.
func fillSecret(sec *corev1.Secret, key *kw.ApiKey, k keys.Key, gen int64, endpoint string) {
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Labels[kw.LabelManagedBy], sec.Labels[kw.LabelApiKey] = kw.ManagedByValue, key.Name
	sec.Annotations[kw.AnnotationKeyID] = k.ID
	sec.Annotations[kw.AnnotationGeneration] = strconv.FormatInt(gen, 10)
	sec.Data = map[string][]byte{
		kw.SecretKeyToken:    []byte(k.Token()),
		kw.SecretKeyKeyID:    []byte(k.ID),
		kw.SecretKeySecret:   []byte(k.Secret),
		kw.SecretKeyEndpoint: []byte(endpoint),
	}
}

// recordRotation adds the key sec holds to the record as the current one;
// the keys before it stop working after the grace period. The patch is
// made against the record as read, so a stale record is never extended.
func (r *ApiKeyReconciler) recordRotation(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord, sec *corev1.Secret, v *verdict) (*kw.ApiKeyRecord, error) {
	id, secret, err := keys.Parse(string(sec.Data[kw.SecretKeyToken]))
	if err != nil || id != sec.Annotations[kw.AnnotationKeyID] {
		return nil, fmt.Errorf("Secret %s/%s holds no valid token for its key-id annotation", sec.Namespace, sec.Name)
	}
	now := r.Clock.Now()
	revokes := metav1.NewTime(now.Add(key.GracePeriod()).Truncate(time.Second))
	patch := client.MergeFromWithOptions(rec.DeepCopy(), client.MergeFromWithOptimisticLock{})
	list := []kw.RecordedKey{{KeyID: id, Digest: keys.Digest(secret), IssuedAt: metav1.NewTime(now), Generation: secretGeneration(sec)}}
	for _, k := range rec.Spec.Keys {
		if k.RevokesAt == nil || k.RevokesAt.After(revokes.Time) {
			k.RevokesAt = revokes.DeepCopy()
		}
		list = append(list, k)
	}
	if len(list) > maxRecordedKeys {
		// Rotations faster than their grace period: the oldest keys go early.
		r.Recorder.Eventf(key, nil, corev1.EventTypeWarning, kw.ReasonRotated, "Rotate",
			"more than %d keys in their grace period; the oldest %d stop working now", maxRecordedKeys-1, len(list)-maxRecordedKeys)
		list = list[:maxRecordedKeys]
	}
	prev := rec.Current().KeyID
	rec.Spec.Keys = list
	if err := r.Patch(ctx, rec, patch, client.FieldOwner(FieldOwner)); err != nil {
		return nil, fmt.Errorf("record rotated key %s of %s/%s: %w", id, key.Namespace, key.Name, err)
	}
	log.FromContext(ctx).Info("rotated key", "keyId", id, "previousKeyId", prev, "generation", secretGeneration(sec))
	r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, kw.ReasonRotated, "Rotate",
		"rotated to key %s (generation %d) in Secret %s; key %s works until %s", id, secretGeneration(sec), sec.Name,
		prev, revokes.UTC().Format(time.RFC3339))
	v.set(kw.StateActive, kw.ReasonIssued, "key %s is in Secret %s", id, sec.Name)
	return rec, nil
}

// pruneRevoked drops from the record the keys whose grace period is over
// (the endpoint stopped accepting them at that instant already).
func (r *ApiKeyReconciler) pruneRevoked(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord) error {
	now := r.Clock.Now()
	keep := rec.Spec.Keys[:1:1]
	for _, k := range rec.Spec.Keys[1:] {
		if k.RevokesAt == nil || k.RevokesAt.After(now) {
			keep = append(keep, k)
		}
	}
	if len(keep) == len(rec.Spec.Keys) {
		return nil
	}
	patch := client.MergeFromWithOptions(rec.DeepCopy(), client.MergeFromWithOptimisticLock{})
	rec.Spec.Keys = keep
	if err := r.Patch(ctx, rec, patch, client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("drop revoked keys of %s/%s: %w", key.Namespace, key.Name, err)
	}
	return nil
}

// scheduleRotation raises spec.rotation.generation when spec.rotation.every
// has passed since the current key was issued, and says when to look again.
func (r *ApiKeyReconciler) scheduleRotation(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord) (time.Duration, error) {
	if key.Spec.Rotation == nil || key.Spec.Rotation.Every == nil || rec == nil {
		return 0, nil
	}
	cur := rec.Current()
	if key.DesiredGeneration() > cur.Generation {
		return 0, nil // a rotation is under way
	}
	due := cur.IssuedAt.Add(key.Spec.Rotation.Every.Duration)
	if wait := due.Sub(r.Clock.Now()); wait > 0 {
		return wait, nil
	}
	patch := client.MergeFromWithOptions(key.DeepCopy(), client.MergeFromWithOptimisticLock{})
	key.Spec.Rotation.Generation = cur.Generation + 1
	if err := r.Patch(ctx, key, patch, client.FieldOwner(FieldOwner)); err != nil {
		return 0, fmt.Errorf("raise the rotation generation of %s/%s: %w", key.Namespace, key.Name, err)
	}
	r.Recorder.Eventf(key, nil, corev1.EventTypeNormal, kw.ReasonRotated, "ScheduleRotation",
		"spec.rotation.every (%s) has passed since key %s was issued: raised spec.rotation.generation to %d",
		key.Spec.Rotation.Every.Duration, cur.KeyID, key.Spec.Rotation.Generation)
	return 0, nil
}

// nextRevocation is the time until the earliest grace period of rec ends.
func nextRevocation(rec *kw.ApiKeyRecord, now time.Time) time.Duration {
	var next time.Duration
	for _, k := range rec.Spec.Keys[1:] {
		if k.RevokesAt != nil {
			if d := k.RevokesAt.Sub(now); d > 0 && (next == 0 || d < next) {
				next = d
			}
		}
	}
	return next
}
