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
	n [numOutcomes]atomic.Uint64
	// lastUsed is the Unix nanoseconds of the last allowed check, and, in
	// bit 62 (dirtyBit: Unix nanoseconds reach it in the year 2116), whether
	// a check was counted since the last usage report took the key.
	lastUsed atomic.Int64
}

const dirtyBit = int64(1) << 62

// count counts a check, then marks the key changed: a report clears the
// mark before it reads the counts, so a count it misses leaves the mark
// for the next report.
func (u *Usage) count(o Outcome, now time.Time, n uint64) {
	u.n[o].Add(n) // n is 0 for a decoy (Index.CountProbed): the same write, no count
	switch {
	case o == Allowed:
		u.lastUsed.Store(now.UnixNano() | dirtyBit)
	case o == WrongSecret:
		// A wrong secret, for a key or for an unknown key ID's decoy (n
		// 0, marking nothing), writes the mark whether or not it is set.
		// Skipping the write when it is set, as below, made a key's first
		// wrong secret after a usage report an atomic write slower than
		// an unknown key ID's (TestTimingUnknownKeyID).
		u.lastUsed.Or(dirtyBit * int64(n))
	case u.lastUsed.Load()&dirtyBit == 0:
		// The secret matched: only the key's holder learns of this write.
		u.lastUsed.Or(dirtyBit)
	}
}

// takeChanged clears the mark of a counted check and reports whether it
// was set; read the counts after it.
func (u *Usage) takeChanged() bool {
	return u.lastUsed.Load()&dirtyBit != 0 && u.lastUsed.And(^dirtyBit)&dirtyBit != 0
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
	if n := u.lastUsed.Load() &^ dirtyBit; n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}
