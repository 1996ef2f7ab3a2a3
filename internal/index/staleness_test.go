package index

import (
	"testing"
	"time"
)

// The index is as stale as its least current watch: zero while every
// watch stream is open, and from the moment one breaks, the time since it
// last delivered anything. Past the limit it says it is stale, and fresh
// again once the watch is back.
func TestStalenessFollowsTheLeastCurrentWatch(t *testing.T) {
	ix := New()
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	keysWatch, policiesWatch := ix.NewFreshness(t0), ix.NewFreshness(t0)
	if got := ix.Staleness(t0.Add(time.Hour)); got != time.Hour {
		t.Fatalf("never opened: %s, want 1h", got)
	}
	keysWatch.Opened(t0)
	policiesWatch.Opened(t0)
	if got := ix.Staleness(t0.Add(time.Hour)); got != 0 {
		t.Fatalf("both open: %s, want 0", got)
	}
	keysWatch.Heard(t0.Add(10 * time.Second))
	keysWatch.Closed(t0.Add(20 * time.Second))
	now := t0.Add(50 * time.Second)
	if got := ix.Staleness(now); got != 30*time.Second {
		t.Fatalf("keys watch broke 30s ago: %s", got)
	}
	if ix.CheckStaleness(now, 0); ix.Stale() {
		t.Fatal("stale with no limit")
	}
	if ix.CheckStaleness(now, time.Minute); ix.Stale() {
		t.Fatal("stale under the limit")
	}
	if ix.CheckStaleness(now.Add(31*time.Second), time.Minute); !ix.Stale() {
		t.Fatal("not stale past the limit")
	}
	keysWatch.Opened(now.Add(40 * time.Second))
	if ix.CheckStaleness(now.Add(41*time.Second), time.Minute); ix.Stale() {
		t.Fatal("still stale after the watch came back")
	}
}
