package v1alpha1

// Condition types.
const (
	// ConditionReady says whether the ApiKey is as its spec asks: True for
	// a key issued and delivered (Issued) and for one archived or expired
	// as the spec says (Archived, Expired); False while it is issued
	// (Issuing) or cannot be (the reasons Stalls names).
	ConditionReady = "Ready"
	// ConditionReconciling and ConditionStalled follow the kstatus
	// conventions (sigs.k8s.io/cli-utils/pkg/kstatus) that Flux, Argo CD
	// and kubectl wait read: Reconciling while the key is being issued,
	// Stalled while it cannot proceed without someone acting (the reason
	// and message are Ready's). Neither is present otherwise.
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
	// ReasonIssuing is Ready's and Reconciling's reason before the key is
	// issued.
	ReasonIssuing = "Issuing"
)

// Stalls reports whether Ready's reason means the ApiKey cannot proceed
// until someone acts: kstatus reads it as Failed.
func Stalls(reason string) bool {
	switch reason {
	case ReasonSecretConflict, ReasonSecretMissing, ReasonScopeNotAllowed, ReasonKeyIdConflict:
		return true
	}
	return false
}

// Reasons of the Ready condition.
const (
	ReasonIssued         = "Issued"
	ReasonSecretConflict = "SecretConflict"
	ReasonSecretMissing  = "SecretMissing"
	ReasonArchived       = "Archived"
	ReasonExpired        = "Expired"
	// ReasonScopeNotAllowed: the key holds a scope an ApiKeyPolicy restricts
	// and its namespace may not grant; the endpoint refuses that scope.
	ReasonScopeNotAllowed = "ScopeNotAllowed"
	// ReasonKeyIdConflict: a key ID this ApiKey would record, or has
	// recorded, belongs to another ApiKey whose record is older. A key ID
	// belongs to one ApiKey, cluster-wide, for ever: the endpoint serves it
	// for that other ApiKey only, and nothing of this one's is recorded.
	ReasonKeyIdConflict = "KeyIdConflict"
	// ReasonRotated is the Event of a rotation.
	ReasonRotated = "Rotated"
)

// Labels and annotations keyward puts on what it writes.
const (
	// LabelManagedBy marks the Secrets and records keyward wrote; the
	// controller's Secret cache sees only Secrets with it.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "keyward"
	// LabelApiKey names the ApiKey a Secret or record belongs to.
	LabelApiKey = "keyward.dev/apikey"
	// AnnotationKeyID is the key ID a Secret holds.
	AnnotationKeyID = "keyward.dev/key-id"
	// AnnotationGeneration is the rotation generation of the key a Secret
	// holds.
	AnnotationGeneration = "keyward.dev/generation"
	// Finalizer lets the controller revoke a deleted key before it is gone.
	Finalizer = "keyward.dev/revoke"
)

// Data keys of the Secret that holds a key (documented in the README).
const (
	SecretKeyToken    = "token"
	SecretKeyKeyID    = "keyId"
	SecretKeySecret   = "secret"
	SecretKeyEndpoint = "endpoint"
)
