// Package authn decides whether a request's API key is good: credentials
// in, verdict out. The HTTP, gRPC and review adapters all call it; none of
// them decides anything itself.
package authn

import (
	"fmt"
	"net/http"
	"time"

	"keyward.dev/keyward/internal/index"
)

// Reasons are the machine-readable codes of a verdict.
const (
	ReasonAllowed              = "allowed"
	ReasonMissingKey           = "missing_key"
	ReasonMalformedKey         = "malformed_key"
	ReasonInvalidKey           = "invalid_key"
	ReasonArchived             = "archived"
	ReasonExpired              = "expired"
	ReasonInsufficientScope    = "insufficient_scope"
	ReasonAmbiguousCredentials = "ambiguous_credentials"
	ReasonNotReady             = "not_ready"
	ReasonMalformedRequest     = "malformed_request"
	ReasonTooManyScopes        = "too_many_scopes"
	// ReasonStale: the endpoint has not heard from the API server for
	// longer than --max-staleness and fails closed.
	ReasonStale = "stale"
	// ReasonInternalError answers a check whose handler failed (a bug);
	// the process keeps serving.
	ReasonInternalError = "internal_error"
	// ReasonRateLimited and ReasonQuotaExceeded refuse a good key over its
	// spec.limits, with 429 and when to retry.
	ReasonRateLimited   = "rate_limited"
	ReasonQuotaExceeded = "quota_exceeded"
)

// Verdict is the answer to one check.
type Verdict struct {
	Allowed bool
	// Code is the HTTP status: 200, 400, 401, 403, 429 or 503.
	Code    int
	Reason  string
	Message string
	// Identity is the key that was presented, once its secret verified;
	// zero otherwise.
	Identity index.Identity
	// QueryKey: the key came in the query string (the adapter warns).
	QueryKey bool
	// Limits is how the call stood against the key's limits, for the
	// RateLimit headers; zero when the key has none.
	Limits index.LimitState
}

// Static verdicts: the hot path allocates none of them.
var (
	notReady = Verdict{Code: http.StatusServiceUnavailable, Reason: ReasonNotReady,
		Message: "keyward has not finished loading keys; retry shortly"}
	invalid = Verdict{Code: http.StatusUnauthorized, Reason: ReasonInvalidKey,
		Message: "the API key is not valid"}
	archived = Verdict{Code: http.StatusUnauthorized, Reason: ReasonArchived,
		Message: "the API key was archived and no longer works"}
	stale = Verdict{Code: http.StatusServiceUnavailable, Reason: ReasonStale,
		Message: "keyward has lost touch with the Kubernetes API server for too long to vouch for any key; retry shortly"}
	tooManyScopes = Verdict{Code: http.StatusBadRequest, Reason: ReasonTooManyScopes,
		Message: fmt.Sprintf("the request requires more than %d scopes; a route may require at most %d", MaxRequiredScopes, MaxRequiredScopes)}
	expired = Verdict{Code: http.StatusUnauthorized, Reason: ReasonExpired,
		Message: "the API key has expired"}
)

// Decider checks credentials against an index.
type Decider struct {
	Index *index.Index
	// NoUsage turns off counting checks per key (benchmarks compare the
	// hot path with and without it).
	NoUsage bool
}

// Decide checks one request's credentials, at time now, against the scopes
// its route requires. Expiry is judged against now, so a key stops working
// on time even if the controller is late.
func (d *Decider) Decide(c Credentials, required Scopes, now time.Time) Verdict {
	if !d.Index.Synced() {
		return notReady
	}
	if d.Index.Stale() {
		return stale
	}
	if required.tooMany() {
		return tooManyScopes
	}
	if c.Reason != "" {
		return Verdict{Code: http.StatusUnauthorized, Reason: c.Reason, Message: c.Message, QueryKey: c.Query}
	}
	v := d.check(c.ID, c.Secret, required, now)
	v.QueryKey = c.Query
	return v
}

func (d *Decider) check(id, secret string, required Scopes, now time.Time) Verdict {
	// An unknown key ID costs what a known one with a wrong secret does:
	// Probe hands back a decoy, whose digest is compared and whose counter
	// is written without counting. Every check of a known key counts
	// toward it, denials too: a team sees a revoked key still being tried.
	e, found := d.Index.Probe(id)
	// found and match combine without a branch between them: a branch
	// taken only for unknown key IDs would tell them apart by a few
	// cycles (TestTimingUnknownKeyID).
	if bit(found)&bit(e.Sum.Matches(secret)) == 0 {
		if !d.NoUsage {
			d.Index.CountProbed(e.Identity, found, index.WrongSecret, now)
		}
		return invalid
	}
	// Only a caller who holds the secret learns the key's state.
	if e.Archived {
		d.count(e.Identity, index.Archived, now)
		return archived
	}
	if e.ExpiredAt(now) {
		d.count(e.Identity, index.Expired, now)
		return expired
	}
	if missing, ok := required.missingFrom(e.Scopes()); !ok {
		d.count(e.Identity, index.InsufficientScope, now)
		return Verdict{Code: http.StatusForbidden, Reason: ReasonInsufficientScope, Identity: e.Identity,
			Message: "the API key lacks the scope " + missing}
	}
	if !e.Limited() {
		d.count(e.Identity, index.Allowed, now)
		return Verdict{Allowed: true, Code: http.StatusOK, Reason: ReasonAllowed, Identity: e.Identity}
	}
	st := d.Index.Admit(e.Identity, now)
	switch st.Reason {
	case index.LimitRate:
		d.count(e.Identity, index.Limited, now)
		return Verdict{Code: http.StatusTooManyRequests, Reason: ReasonRateLimited, Identity: e.Identity, Limits: st,
			Message: "the API key is over its rate limit; retry after the seconds in Retry-After"}
	case index.LimitQuota:
		d.count(e.Identity, index.Limited, now)
		return Verdict{Code: http.StatusTooManyRequests, Reason: ReasonQuotaExceeded, Identity: e.Identity, Limits: st,
			Message: "the API key has used its daily quota; retry after the seconds in Retry-After"}
	}
	d.count(e.Identity, index.Allowed, now)
	return Verdict{Allowed: true, Code: http.StatusOK, Reason: ReasonAllowed, Identity: e.Identity, Limits: st}
}

// bit is 1 for true and 0 for false; the compiler makes it a SETcc, not
// a branch.
func bit(b bool) uint8 {
	var n uint8
	if b {
		n = 1
	}
	return n
}

func (d *Decider) count(e index.Identity, o index.Outcome, now time.Time) {
	if !d.NoUsage {
		d.Index.Count(e, o, now)
	}
}
