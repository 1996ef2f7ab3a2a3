package v1alpha1

// Condition types.
const (
	// ConditionReady says whether the key is issued, delivered and valid.
	ConditionReady = "Ready"
)

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
