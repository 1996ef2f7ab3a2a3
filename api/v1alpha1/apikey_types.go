package v1alpha1

import (
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Scope is one permission a key grants: segments of lowercase letters,
// digits, '.', '_' or '-' joined by ':' (occupancy:read, agents:activate),
// where a segment may be '*' (devices:*, *:write); '*' alone is full access.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=128
// +kubebuilder:validation:XValidation:rule="self.matches('^([a-z0-9]([a-z0-9._-]*[a-z0-9])?|[*])(:([a-z0-9]([a-z0-9._-]*[a-z0-9])?|[*]))*$')",message="a scope is lowercase words (letters, digits, '.', '_', '-') joined by ':', such as occupancy:read or devices:*, or '*' for full access"
type Scope string

// ApiKeySpec is what a team declares. Nothing in it is secret, so it is safe
// to keep in Git.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.archived) || !oldSelf.archived || (has(self.archived) && self.archived)",message="archival is one-way: spec.archived cannot go back to false; create a new ApiKey instead"
// +kubebuilder:validation:XValidation:rule="has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)",message="spec.secretName cannot change once set; create a new ApiKey to use another Secret"
// +kubebuilder:validation:XValidation:rule="(has(self.rotation) && has(self.rotation.generation) ? self.rotation.generation : 0) >= (has(oldSelf.rotation) && has(oldSelf.rotation.generation) ? oldSelf.rotation.generation : 0)",message="spec.rotation.generation cannot decrease (also not by leaving it out): it counts the rotations made; raise it to rotate again"
// +kubebuilder:validation:XValidation:rule="!has(self.archived) || !self.archived || (has(self.rotation) && has(self.rotation.generation) ? self.rotation.generation : 0) == (has(oldSelf.rotation) && has(oldSelf.rotation.generation) ? oldSelf.rotation.generation : 0)",message="an archived key cannot be rotated: spec.rotation.generation cannot change once spec.archived is true; create a new ApiKey instead"
type ApiKeySpec struct {
	// DisplayName is a human-friendly name for the key.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	DisplayName string `json:"displayName,omitempty"`

	// Description says what the key is for.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Description string `json:"description,omitempty"`

	// Scopes the key grants. A gateway route names the scope it needs; a key
	// without it is refused with 403.
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	Scopes []Scope `json:"scopes"`

	// Archived revokes the key at once. It is one-way: the ApiKey stays for
	// audit, the key never works again.
	// +optional
	Archived bool `json:"archived,omitempty"`

	// ExpiresAt is when the key stops working (RFC 3339).
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// SecretName is the Secret, in the ApiKey's namespace, that receives the
	// key. Defaults to <name>-apikey. It cannot change once set.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName,omitempty"`

	// Rotation replaces the key with a new one in the same Secret, while the
	// previous key keeps working for a grace period.
	// +optional
	Rotation *Rotation `json:"rotation,omitempty"`

	// Limits cap the calls the key may make, across all its keys (the
	// current one and those still in a rotation's grace period). Every
	// endpoint replica enforces them; a change takes effect within a
	// second, with the same key.
	// +optional
	Limits *Limits `json:"limits,omitempty"`
}

// Limits cap a key's calls: a rate with a burst (a token bucket), and a
// quota over a rolling 24 hours. A call over a limit is refused with 429.
// +kubebuilder:validation:XValidation:rule="!has(self.burst) || has(self.requestsPerSecond)",message="spec.limits.burst needs spec.limits.requestsPerSecond: burst is how many calls may come at once on top of that rate"
type Limits struct {
	// RequestsPerSecond is the rate the key may keep up: the bucket refills
	// at this many calls a second.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	RequestsPerSecond *int32 `json:"requestsPerSecond,omitempty"`
	// Burst is how many calls may come at once, the bucket's size
	// (default: requestsPerSecond).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000000
	Burst *int32 `json:"burst,omitempty"`
	// RequestsPerDay is the quota of allowed calls in any 24 hours, the
	// same rolling window as the CALLS-24H column.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000000000
	RequestsPerDay *int64 `json:"requestsPerDay,omitempty"`
}

// Rate is the limit's calls per second and its burst, 0, 0 for none.
func (l *Limits) Rate() (perSecond, burst int64) {
	if l == nil || l.RequestsPerSecond == nil {
		return 0, 0
	}
	perSecond, burst = int64(*l.RequestsPerSecond), int64(*l.RequestsPerSecond)
	if l.Burst != nil {
		burst = int64(*l.Burst)
	}
	return perSecond, burst
}

// PerDay is the daily quota, 0 for none.
func (l *Limits) PerDay() int64 {
	if l == nil || l.RequestsPerDay == nil {
		return 0
	}
	return *l.RequestsPerDay
}

// String is the limits as kubectl shows them: 50/s (burst 100), 1000/day.
func (l *Limits) String() string {
	var parts []string
	if rate, burst := l.Rate(); rate > 0 {
		p := strconv.FormatInt(rate, 10) + "/s"
		if burst != rate {
			p += " (burst " + strconv.FormatInt(burst, 10) + ")"
		}
		parts = append(parts, p)
	}
	if d := l.PerDay(); d > 0 {
		parts = append(parts, strconv.FormatInt(d, 10)+"/day")
	}
	return strings.Join(parts, ", ")
}

// Quota is where a key stands against its daily quota.
type Quota struct {
	// RequestsPerDay is the quota (spec.limits.requestsPerDay).
	RequestsPerDay int64 `json:"requestsPerDay"`
	// Used is the allowed calls of the trailing 24 hours (usage.last24h).
	Used int64 `json:"used"`
	// ExhaustedUntil, when set, is when enough of the window's calls fall
	// out for the key to be allowed again: until then every replica
	// refuses it with quota_exceeded.
	// +optional
	ExhaustedUntil *metav1.Time `json:"exhaustedUntil,omitempty"`
}

// Rotation asks for new keys, by hand or on a schedule.
type Rotation struct {
	// Generation: raise it to rotate the key (kubectl patch, or a commit).
	// It never decreases.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	Generation int64 `json:"generation"`
	// GracePeriod is how long the previous key keeps working after a
	// rotation, such as 24h or 90m; 0s revokes it at once.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`
	// Every makes the controller rotate on this schedule itself (it raises
	// Generation and says so in an Event), such as 2160h for 90 days.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="spec.rotation.every must be at least 1m"
	Every *metav1.Duration `json:"every,omitempty"`
}

// DesiredGeneration is the rotation generation the spec asks for.
func (k *ApiKey) DesiredGeneration() int64 {
	if k.Spec.Rotation == nil {
		return 0
	}
	return k.Spec.Rotation.Generation
}

// GracePeriod is how long a superseded key keeps working (default 24h).
func (k *ApiKey) GracePeriod() time.Duration {
	if k.Spec.Rotation == nil || k.Spec.Rotation.GracePeriod == nil {
		return 24 * time.Hour
	}
	return k.Spec.Rotation.GracePeriod.Duration
}

// PreviousKey is a key superseded by a rotation, working until RevokesAt.
type PreviousKey struct {
	KeyID     string      `json:"keyId"`
	RevokesAt metav1.Time `json:"revokesAt"`
}

// KeyState is where a key stands in its life.
// +kubebuilder:validation:Enum=Pending;Active;Archived;Expired;Failed
type KeyState string

// The states of a key.
const (
	// StatePending: no key has been issued yet.
	StatePending KeyState = "Pending"
	// StateActive: the key verifies.
	StateActive KeyState = "Active"
	// StateArchived: the key was revoked by spec.archived.
	StateArchived KeyState = "Archived"
	// StateExpired: spec.expiresAt has passed.
	StateExpired KeyState = "Expired"
	// StateFailed: keyward cannot issue or deliver the key (see conditions).
	StateFailed KeyState = "Failed"
)

// Usage counts the calls made with a key.
type Usage struct {
	// Last24h is the number of allowed calls in the trailing 24 hours.
	// +optional
	Last24h int64 `json:"last24h"`
	// Denied24h is the number of denied calls in the trailing 24 hours.
	// +optional
	Denied24h int64 `json:"denied24h"`
	// Limited24h is how many of the denied calls were refused for the
	// key's limits (429: rate_limited or quota_exceeded).
	// +optional
	Limited24h int64 `json:"limited24h,omitempty"`
	// Hours are the calls by hour (UTC), oldest first, counted in the hour
	// the controller collected them. An hour falls out once it began more
	// than 24 hours ago, so Last24h and Denied24h never count a call older
	// than 24 hours and cover at least the last 23.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=25
	Hours []UsageHour `json:"hours,omitempty"`
	// Cursors say how much of each auth endpoint replica's counts is
	// already in Hours, so that no call is counted twice: one per replica
	// run and key ID, dropped once that run can never report again (its
	// pod restarted or left the endpoints' Service).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=1000
	Cursors []UsageCursor `json:"cursors,omitempty"`
}

// UsageHour counts the calls of one hour.
type UsageHour struct {
	// Start is the beginning of the hour.
	Start metav1.Time `json:"start"`
	// Allowed and Denied count the calls of the hour; Limited, those of
	// the denied refused for the key's limits.
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
	// +optional
	Limited int64 `json:"limited,omitempty"`
}

// UsageCursor is how far one endpoint replica's counts for one key ID are
// taken in.
type UsageCursor struct {
	// Replica identifies one run of one auth endpoint replica.
	// +kubebuilder:validation:MaxLength=64
	Replica string `json:"replica"`
	// +kubebuilder:validation:MaxLength=64
	KeyID string `json:"keyId"`
	// Allowed, Denied and Limited are the replica's counts taken in so
	// far.
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
	// +optional
	Limited int64 `json:"limited,omitempty"`
	// SeenAt is when the replica last reported; a cursor whose replica is
	// gone is dropped a day later.
	SeenAt metav1.Time `json:"seenAt"`
}

// ApiKeyStatus is keyward's view of the key. Everything in it can be
// rebuilt from the ApiKeyRecord and the Secret, so losing it (a restore that
// drops status) loses nothing.
type ApiKeyStatus struct {
	// KeyID is the public identifier of the current key (safe to log).
	// +optional
	KeyID string `json:"keyId,omitempty"`
	// State of the key.
	// +optional
	State KeyState `json:"state,omitempty"`
	// Scopes is spec.scopes as one comma-separated string, for kubectl.
	// +optional
	Scopes string `json:"scopes,omitempty"`
	// SecretName is the Secret that holds the key.
	// +optional
	SecretName string `json:"secretName,omitempty"`
	// Endpoint is the gateway URL the key is used against.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// IssuedAt is when the current key was issued.
	// +optional
	IssuedAt *metav1.Time `json:"issuedAt,omitempty"`
	// PreviousKeys are keys superseded by a rotation that still work until
	// their RevokesAt (the grace period).
	// +optional
	// +listType=atomic
	PreviousKeys []PreviousKey `json:"previousKeys,omitempty"`
	// ArchivedAt is when the key was archived.
	// +optional
	ArchivedAt *metav1.Time `json:"archivedAt,omitempty"`
	// LastUsedAt is the last time the key was used for an allowed call.
	// +optional
	LastUsedAt *metav1.Time `json:"lastUsedAt,omitempty"`
	// Usage counts the calls of the trailing 24 hours.
	// +optional
	Usage *Usage `json:"usage,omitempty"`
	// Limits is spec.limits as one string, for kubectl (-o wide).
	// +optional
	Limits string `json:"limits,omitempty"`
	// Quota is where the key stands against spec.limits.requestsPerDay.
	// +optional
	Quota *Quota `json:"quota,omitempty"`
	// Conditions: Ready says whether the key is issued, delivered and valid.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// ApiKey declares an API key. keyward issues it, stores only its hash, and
// writes the plaintext once into a Secret beside it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ak;apikey,categories=keyward
// +kubebuilder:printcolumn:name="Key ID",type=string,JSONPath=`.status.keyId`
// +kubebuilder:printcolumn:name="Scopes",type=string,JSONPath=`.status.scopes`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Calls-24h",type=integer,JSONPath=`.status.usage.last24h`
// +kubebuilder:printcolumn:name="Last Used",type=date,JSONPath=`.status.lastUsedAt`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Limits",type=string,JSONPath=`.status.limits`,priority=1
// +kubebuilder:printcolumn:name="Quota-Used",type=integer,JSONPath=`.status.quota.used`,priority=1
// +kubebuilder:printcolumn:name="Limited-24h",type=integer,JSONPath=`.status.usage.limited24h`,priority=1
// +kubebuilder:validation:XValidation:rule="has(self.spec.secretName) || size(self.metadata.name) <= 246",message="the name is too long for the default Secret name <name>-apikey; set spec.secretName"
type ApiKey struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ApiKeySpec   `json:"spec"`
	Status ApiKeyStatus `json:"status,omitempty"`
}

// ApiKeyList is a list of ApiKeys.
// +kubebuilder:object:root=true
type ApiKeyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ApiKey `json:"items"`
}

// EffectiveSecretName is the Secret the key goes into.
func (k *ApiKey) EffectiveSecretName() string {
	if k.Spec.SecretName != "" {
		return k.Spec.SecretName
	}
	return k.Name + DefaultSecretSuffix
}

// DefaultSecretSuffix ends the name of the Secret of an ApiKey whose
// spec.secretName is empty: NAME-apikey.
const DefaultSecretSuffix = "-apikey"

func init() {
	SchemeBuilder.Register(&ApiKey{}, &ApiKeyList{})
}
