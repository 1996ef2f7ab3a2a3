package index

import (
	"sync/atomic"
	"time"
)

// Outcome is what a check of a known key ended in, for usage counting.
type Outcome uint8

// The outcomes a known key's check can have.
const (
	Allowed Outcome = iota
	WrongSecret
	Archived
	Expired
	InsufficientScope
	// Limited: refused for the key's limits (rate or quota).
	Limited
	numOutcomes
)

// OutcomeNames are the outcomes as metrics and the usage report name them
// (the reasons of the verdicts).
var OutcomeNames = [numOutcomes]string{"allowed", "invalid_key", "archived", "expired", "insufficient_scope", "limited"}

// Usage counts one key's checks since this endpoint started: a few atomic
// adds on the hot path (Index.Count), read by the usage report and the
// metrics (Index.Each). It lives in the key's record.
type Usage struct {
	n        [numOutcomes]atomic.Uint64
	lastUsed atomic.Int64 // Unix nanoseconds of the last allowed check
}

func (u *Usage) count(o Outcome, now time.Time) {
	u.n[o].Add(1)
	if o == Allowed {
		u.lastUsed.Store(now.UnixNano())
	}
}

// copyFrom takes over another record's counts, when no check can count.
func (u *Usage) copyFrom(from *Usage) {
	for i := range u.n {
		u.n[i].Store(from.n[i].Load())
	}
	u.lastUsed.Store(from.lastUsed.Load())
}

// Counts returns the number of checks by outcome.
func (u *Usage) Counts() (c [numOutcomes]uint64) {
	for i := range u.n {
		c[i] = u.n[i].Load()
	}
	return c
}

// Totals returns allowed and denied checks.
func (u *Usage) Totals() (allowed, denied uint64) {
	c := u.Counts()
	for i, n := range c {
		if Outcome(i) == Allowed {
			allowed += n
		} else {
			denied += n
		}
	}
	return allowed, denied
}

// LastUsed is the time of the last allowed check, zero if none.
func (u *Usage) LastUsed() time.Time {
	if n := u.lastUsed.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}
