package index

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
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

// A watch stream that ends in an error (the API server could not resume
// it) did not bring the index up to date: the index ages from what it last
// heard, not from the moment the stream opened or ended. Before, both
// counted as heard, and a watch refused again and again looked fresh.
func TestAWatchThatFailsLeavesTheIndexAging(t *testing.T) {
	ix := New()
	t0 := time.Now()
	f := ix.NewFreshness(t0)
	w := watch.NewFake()
	lw := liveWatch(w, f)
	if got := ix.Staleness(t0.Add(time.Hour)); got != 0 {
		t.Fatalf("with the stream open: %s, want 0", got)
	}
	go func() {
		w.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired,
			Message: "too old resource version: 242 (243)"})
		w.Stop()
	}()
	for e := range lw.ResultChan() {
		if e.Type != watch.Error {
			t.Fatalf("passed on %s, want the error", e.Type)
		}
	}
	if got := ix.Staleness(t0.Add(time.Hour)); got < time.Hour {
		t.Fatalf("after a stream that failed: %s, want an hour (since the index last heard)", got)
	}

	// A stream that ends cleanly leaves the index current until it ended.
	w = watch.NewFake()
	lw = liveWatch(w, f)
	go w.Stop()
	for range lw.ResultChan() {
	}
	if got := ix.Staleness(time.Now()); got > time.Minute {
		t.Fatalf("after a stream that ended cleanly: %s, want about 0", got)
	}
}
