package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RecordedKey is one issued key as the data plane sees it: its public ID and
// a digest of its secret, never the secret.
type RecordedKey struct {
	// KeyID is the public identifier of the key.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	KeyID string `json:"keyId"`
	// Digest is "<algorithm>:<hex>" of the key's secret, e.g. sha256:….
	// +kubebuilder:validation:Pattern=`^sha256:[0-9a-f]{64}$`
	Digest string `json:"digest"`
	// IssuedAt is when the key was issued.
	IssuedAt metav1.Time `json:"issuedAt"`
	// Generation is the ApiKey's spec.rotation.generation the key was
	// issued for: one key per generation, whatever happens.
	// +optional
	Generation int64 `json:"generation,omitempty"`
	// RevokesAt, when set, is when the key stops verifying (a key superseded
	// by a rotation keeps working until then).
	// +optional
	RevokesAt *metav1.Time `json:"revokesAt,omitempty"`
}

// ApiKeyRecordSpec is the durable record of the keys issued for an ApiKey.
// It lives in spec, not status, so a backup and restore that drops status
// keeps it, and with it the fact that a key was issued.
type ApiKeyRecordSpec struct {
	// Keys that verify for the ApiKey; the first is the current one.
	// +listType=map
	// +listMapKey=keyId
	// +kubebuilder:validation:MaxItems=8
	// +optional
	Keys []RecordedKey `json:"keys,omitempty"`
	// Revoked is set when the ApiKey is archived; no key of the record
	// verifies after that. One-way.
	// +optional
	Revoked bool `json:"revoked,omitempty"`
	// RevokedAt is when the record was revoked.
	// +optional
	RevokedAt *metav1.Time `json:"revokedAt,omitempty"`
}

// ApiKeyRecord holds the hashes of an ApiKey's keys. It has the ApiKey's
// name and namespace and is written by the controller only; the auth
// endpoint reads it. A user who may read it learns key IDs and SHA-256
// digests of 256-bit random secrets, which does not help to forge a key.
// +kubebuilder:object:root=true
// +kubebuilder:resource:categories=keyward
// +kubebuilder:printcolumn:name="Key ID",type=string,JSONPath=`.spec.keys[0].keyId`
// +kubebuilder:printcolumn:name="Revoked",type=boolean,JSONPath=`.spec.revoked`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.spec.revoked) || !oldSelf.spec.revoked || (has(self.spec.revoked) && self.spec.revoked)",message="a revoked record cannot be un-revoked"
type ApiKeyRecord struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ApiKeyRecordSpec `json:"spec"`
}

// ApiKeyRecordList is a list of ApiKeyRecords.
// +kubebuilder:object:root=true
type ApiKeyRecordList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ApiKeyRecord `json:"items"`
}

// Current is the key issued last, or nil before the first issue.
func (r *ApiKeyRecord) Current() *RecordedKey {
	if len(r.Spec.Keys) == 0 {
		return nil
	}
	return &r.Spec.Keys[0]
}

func init() {
	SchemeBuilder.Register(&ApiKeyRecord{}, &ApiKeyRecordList{})
}
