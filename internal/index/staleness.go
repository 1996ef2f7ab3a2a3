package index

import (
	"sync/atomic"
	"time"
)

// Freshness tracks how current one watch is: whether its stream is open,
// and when it last delivered anything (its list, an event, a bookmark) or
// ended.
type Freshness struct {
	heard atomic.Int64 // unix nanoseconds
	open  atomic.Bool
}

// Heard records a list, an event or a bookmark.
func (f *Freshness) Heard(now time.Time) { f.heard.Store(now.UnixNano()) }

// Opened records a watch stream that started: while it is open, the API
// server pushes each change at once. It says nothing of what came before:
// a stream that cannot resume ends at once (Failed).
func (f *Freshness) Opened(time.Time) { f.open.Store(true) }

// Closed records a watch stream that ended after it delivered what it
// had: the index was current until now, and ages from here until a new
// stream opens.
func (f *Freshness) Closed(now time.Time) { f.Heard(now); f.open.Store(false) }

// Failed records a watch stream that ended in an error (the API server
// could not resume it from where the index was, say): the index was
// current only until it last heard something, and ages from then.
func (f *Freshness) Failed() { f.open.Store(false) }

// NewFreshness registers one more watch whose freshness bounds the
// index's, starting at now.
func (ix *Index) NewFreshness(now time.Time) *Freshness {
	f := &Freshness{}
	f.Heard(now)
	ix.mu.Lock()
	ix.freshness = append(ix.freshness, f)
	ix.mu.Unlock()
	return f
}

// Staleness is how long the index may have missed changes: zero while
// every watch stream is open (the API server pushes each change at once),
// otherwise the time since the least current watch last heard anything.
func (ix *Index) Staleness(now time.Time) time.Duration {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var worst time.Duration
	for _, f := range ix.freshness {
		if f.open.Load() {
			continue
		}
		worst = max(worst, now.Sub(time.Unix(0, f.heard.Load())))
	}
	return worst
}

// CheckStaleness marks the index stale when its staleness exceeds limit
// (0: never). Checks read the mark, not the clock.
func (ix *Index) CheckStaleness(now time.Time, limit time.Duration) {
	ix.stale.Store(limit > 0 && ix.Staleness(now) > limit)
}

// Stale reports whether the index was last found staler than its limit.
func (ix *Index) Stale() bool { return ix.stale.Load() }
