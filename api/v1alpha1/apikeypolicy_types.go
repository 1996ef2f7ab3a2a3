package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ApiKeyPolicySpec lists restricted scope patterns and the namespaces that
// may grant them.
type ApiKeyPolicySpec struct {
	// RestrictedScopes are scope patterns that a key may hold only where a
	// rule of this policy allows them. A pattern names scopes segment by
	// segment (segments split on ':'): a '*' segment names any one
	// segment, anything else itself; the pattern '*' alone names only the
	// full-access scope '*'. A requested scope is restricted when what it
	// grants overlaps what a pattern names: '*' (full access) is restricted
	// by every pattern, 'devices:*' by '*:write', '*:write' by 'billing:*'.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	RestrictedScopes []Scope `json:"restrictedScopes"`
	// Allow are the rules that let namespaces grant restricted scopes.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	Allow []PolicyRule `json:"allow,omitempty"`
}

// PolicyRule lets the namespaces a selector chooses grant some restricted
// scopes.
type PolicyRule struct {
	// NamespaceSelector chooses namespaces by label; {} chooses all.
	NamespaceSelector metav1.LabelSelector `json:"namespaceSelector"`
	// Scopes are the patterns these namespaces may grant: a restricted
	// scope passes when these cover the part of it that the policy
	// restricts ('*' covers everything; otherwise segment by segment, a
	// '*' segment covers any segment, anything else itself).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	Scopes []Scope `json:"scopes"`
}

// ApiKeyPolicy restricts scopes cluster-wide: each policy is checked on its
// own, and a scope one policy restricts must be allowed by one of that same
// policy's rules. The API server enforces it at admission (a
// ValidatingAdmissionPolicy in config/admission) and the auth endpoint at
// request time.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=keyward
// +kubebuilder:printcolumn:name="RESTRICTED",type=string,JSONPath=`.spec.restrictedScopes`
// +kubebuilder:printcolumn:name="AGE",type=date,JSONPath=`.metadata.creationTimestamp`
type ApiKeyPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ApiKeyPolicySpec `json:"spec"`
}

// ApiKeyPolicyList is a list of ApiKeyPolicies.
// +kubebuilder:object:root=true
type ApiKeyPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ApiKeyPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ApiKeyPolicy{}, &ApiKeyPolicyList{})
}
