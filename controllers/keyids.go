package controllers

import (
	"context"
	"fmt"

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
// or nil. Before recording a key ID, pass own nil: any holder refuses it
// (own's record may be older than the holder's, but its claim would be
// new). With own set, only a holder whose record comes before own (the
// endpoint's ownership rule: created first, then the lower UID) counts:
// that is who the endpoint serves when two records already claim an ID.
func (r *ApiKeyReconciler) keyIDHolder(ctx context.Context, key *kw.ApiKey, own *kw.ApiKeyRecord, id string) (*kw.ApiKeyRecord, error) {
	if id == "" {
		return nil, nil
	}
	var list kw.ApiKeyRecordList
	if err := r.List(ctx, &list, client.MatchingFields{keyIDIndex: id}); err != nil {
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
// ApiKey; announce records the Event.
func (r *ApiKeyReconciler) keyIDConflict(key *kw.ApiKey, id string, holder *kw.ApiKeyRecord, v *verdict) {
	v.set(kw.StateFailed, kw.ReasonKeyIdConflict, "key ID %s belongs to ApiKey %s/%s, recorded first; a key ID belongs to "+
		"one ApiKey for ever, so keyward records nothing of it for this ApiKey and the endpoint never verifies it for "+
		"this one. Delete Secret %s (or create a new ApiKey) to get a key of its own", id, holder.Namespace, holder.Name,
		key.EffectiveSecretName())
}
