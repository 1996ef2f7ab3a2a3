package serve

import (
	"strconv"

	"keyward.dev/keyward/internal/index"
)

// The rate-limit headers of the IETF HTTPAPI draft
// (draft-ietf-httpapi-ratelimit-headers-12): RateLimit-Policy names each
// of the key's policies with its quota (q) and window in seconds (w), and
// RateLimit says, per policy, what is left (r) and the seconds until it
// is whole again (t). They are sent on allowed and refused answers alike,
// so a client can slow down before it is refused; a refusal adds
// Retry-After.
//
// keyward's policies: "rate" (the token bucket: q calls at once, refilled
// over w seconds) and "day" (q calls in a rolling 86,400 seconds). The
// figures are the key's, across replicas; "r" is this replica's view
// scaled by the number of replicas (docs/limits.md).
const (
	HeaderRateLimitPolicy = "RateLimit-Policy"
	HeaderRateLimit       = "RateLimit"
	HeaderRetryAfter      = "Retry-After"
)

// appendRateLimit appends the RateLimit value of st.
func appendRateLimit(b []byte, st *index.LimitState) []byte {
	if st.PerSecond > 0 {
		b = append(b, `"rate";r=`...)
		b = strconv.AppendInt(b, st.RateRemaining, 10)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, st.RateReset, 10)
	}
	if st.PerDay > 0 {
		if st.PerSecond > 0 {
			b = append(b, ", "...)
		}
		b = append(b, `"day";r=`...)
		b = strconv.AppendInt(b, st.DayRemaining, 10)
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, st.DayReset, 10)
	}
	return b
}

// limitHeaders calls set with each rate-limit header of st, its value in
// buf (valid until the next call).
func limitHeaders(st *index.LimitState, buf []byte, set func(name string, value []byte)) {
	if !st.Limited() {
		return
	}
	set(HeaderRateLimitPolicy, append(buf[:0], st.Policy...))
	set(HeaderRateLimit, appendRateLimit(buf[:0], st))
	if st.Reason != index.LimitOK {
		set(HeaderRetryAfter, strconv.AppendInt(buf[:0], max(st.RetryAfter, 1), 10))
	}
}
