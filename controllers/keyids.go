package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/index"
)

// keyIDIndex indexes ApiKeyRecords by the key IDs they hold, cluster-wide:
// a key ID belongs to one ApiKey for ever, and the controller asks this
// index before it records a key ID it did not draw itself (one read from a
// Secret, which anyone who may edit Secrets in a namespace can fill).
const keyIDIndex = "keyward.dev/key-id"

func recordKeyIDs(o client.Object) []string {
	rec := o.(*kw.ApiKeyRecord)
	ids := make([]string, len(rec.Spec.Keys))
	for i, k := range rec.Spec.Keys {
		ids[i] = k.KeyID
	}
	return ids
}

// keyIDHolder returns the record of another ApiKey that holds key ID id,
// or nil. With own set, only a holder whose record comes before own in the
// endpoint's ownership order (index.RecordBefore) counts: that is who the
// endpoint serves when two records already claim an ID.
func (r *ApiKeyReconciler) keyIDHolder(ctx context.Context, key *kw.ApiKey, own *kw.ApiKeyRecord, id string) (*kw.ApiKeyRecord, error) {
	if id == "" {
		return nil, nil
	}
	var list kw.ApiKeyRecordList
	// Read only, so the cache's objects need no copy.
	if err := r.List(ctx, &list, client.MatchingFields{keyIDIndex: id}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("look up key %s: %w", id, err)
	}
	for i := range list.Items {
		h := &list.Items[i]
		if h.Namespace == key.Namespace && h.Name == key.Name {
			continue
		}
		if own == nil || index.RecordBefore(h, own) {
			return h, nil
		}
	}
	return nil, nil
}

// heldElsewhere is asked before a key ID read from a Secret (a restore, an
// unrecorded rotation) is recorded, or the Secret adopted: when any other
// ApiKey's record holds it, however new that claim would be beside an older
// record of this ApiKey, it sets KeyIdConflict and v.conflict and reports
// true, and the caller writes nothing.
func (r *ApiKeyReconciler) heldElsewhere(ctx context.Context, key *kw.ApiKey, sec *corev1.Secret, v *verdict) (bool, error) {
	id := sec.Annotations[kw.AnnotationKeyID]
	holder, err := r.keyIDHolder(ctx, key, nil, id)
	if err != nil || holder == nil {
		return false, err
	}
	v.conflict = true
	r.keyIDConflict(key, id, holder, v, fmt.Sprintf("Delete Secret %s to get a key of its own", sec.Name))
	return true, nil
}

// olderHolder returns, for a record the ApiKey has, another ApiKey's older
// record that holds one of its key IDs, and that key ID.
func (r *ApiKeyReconciler) olderHolder(ctx context.Context, key *kw.ApiKey, rec *kw.ApiKeyRecord) (*kw.ApiKeyRecord, string, error) {
	for _, k := range rec.Spec.Keys {
		h, err := r.keyIDHolder(ctx, key, rec, k.KeyID)
		if err != nil || h != nil {
			return h, k.KeyID, err
		}
	}
	return nil, "", nil
}

// keyIDConflict sets the verdict for a key ID that belongs to holder's
// ApiKey, with what the user can do; announce records the Event.
func (r *ApiKeyReconciler) keyIDConflict(key *kw.ApiKey, id string, holder *kw.ApiKeyRecord, v *verdict, remedy string) {
	v.set(kw.StateFailed, kw.ReasonKeyIdConflict, "key ID %s belongs to ApiKey %s/%s, recorded first; a key ID belongs to "+
		"one ApiKey for ever, so keyward records nothing of it for this ApiKey and the endpoint never verifies it for "+
		"this one. %s", id, holder.Namespace, holder.Name, remedy)
}
