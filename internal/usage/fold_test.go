package usage

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kw "keyward.dev/keyward/api/v1alpha1"
)

func obs(replica, id string, allowed, denied uint64, last time.Time) Observation {
	return Observation{Replica: replica, KeyCount: KeyCount{KeyID: id, Allowed: allowed, Denied: denied, LastUsed: last}}
}

func TestFoldCountsOnceAndRollsOff(t *testing.T) {
	clock := time.Date(2026, 11, 24, 10, 30, 0, 0, time.UTC)
	var u *kw.Usage
	var last *metav1.Time
	step := func(d time.Duration, live map[string]bool, o ...Observation) {
		t.Helper()
		clock = clock.Add(d)
		u, last = Fold(u, last, o, live, clock)
	}
	want := func(allowed, denied int64) {
		t.Helper()
		if u.Last24h != allowed || u.Denied24h != denied {
			t.Fatalf("at %s: last24h=%d denied24h=%d, want %d/%d (hours %+v)", clock, u.Last24h, u.Denied24h, allowed, denied, u.Hours)
		}
	}
	both := map[string]bool{"a": true, "b": true}

	step(0, both, obs("a", "K1", 10, 1, clock), obs("b", "K1", 5, 0, clock))
	want(15, 1)
	// The same totals again (a retried or repeated collection): nothing new.
	step(time.Second, both, obs("a", "K1", 10, 1, clock), obs("b", "K1", 5, 0, clock))
	want(15, 1)
	// Running totals grow: only the increase counts; a second key ID of the
	// same ApiKey (rotation) adds up.
	used := clock.Add(59 * time.Second)
	step(time.Minute, both, obs("a", "K1", 12, 1, used), obs("b", "K1", 5, 0, clock), obs("a", "K2", 3, 0, clock))
	want(20, 1)
	if last == nil || !last.Time.Equal(used) {
		t.Fatalf("lastUsed %v, want the latest of the reports, %v", last, used)
	}
	// Replica b restarts under a new name and counts from zero.
	step(time.Hour, map[string]bool{"a": true, "b2": true}, obs("a", "K1", 12, 1, clock), obs("b2", "K1", 4, 2, clock))
	want(24, 3)
	if len(u.Hours) != 2 {
		t.Fatalf("hours %+v, want 2", u.Hours)
	}
	// 23 hours later the first hour (10:00) still counts: it began less
	// than 24 hours ago.
	step(22*time.Hour+28*time.Minute, map[string]bool{"a": true, "b2": true})
	want(24, 3)
	// From 10:00 the next day it has fallen out.
	step(2*time.Minute, map[string]bool{"a": true, "b2": true})
	want(4, 2)
	// Later b's cursor goes too (its replica is gone and the cursor last
	// moved more than a day ago), while a live replica's cursor stays
	// however old, so its running total is never taken in twice.
	step(3*time.Hour, map[string]bool{"a": true, "b2": true}, obs("a", "K1", 12, 1, clock))
	want(0, 0)
	replicas := map[string]bool{}
	for _, c := range u.Cursors {
		replicas[c.Replica] = true
	}
	if replicas["b"] || !replicas["a"] || !replicas["b2"] {
		t.Fatalf("cursors %+v: want a's and b2's, not b's", u.Cursors)
	}
	step(time.Minute, map[string]bool{"a": true}, obs("a", "K1", 13, 1, clock))
	want(1, 0)
	if len(u.Hours) != 1 {
		t.Fatalf("hours %+v, want only the current one", u.Hours)
	}
}

func TestFoldChanged(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	u, last := Fold(nil, nil, nil, nil, now)
	if Changed(nil, nil, u, last) {
		t.Fatal("an empty fold of an empty status is a change")
	}
	u2, last2 := Fold(u, last, []Observation{obs("a", "K1", 1, 0, now)}, map[string]bool{"a": true}, now)
	if !Changed(u, last, u2, last2) {
		t.Fatal("a new call is not a change")
	}
	u3, last3 := Fold(u2, last2, []Observation{obs("a", "K1", 1, 0, now)}, map[string]bool{"a": true}, now.Add(time.Second))
	if Changed(u2, last2, u3, last3) {
		t.Fatalf("the same totals again are a change: %+v → %+v", u2, u3)
	}
}

// TestFoldCountsLimitedApart: calls refused for the key's limits are
// denials, also counted on their own, once each, and counted anew when a
// replica's counts start again.
func TestFoldCountsLimitedApart(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 30, 0, 0, time.UTC)
	o := func(allowed, denied, limited uint64) Observation {
		return Observation{Replica: "a", KeyCount: KeyCount{KeyID: "K1", Allowed: allowed, Denied: denied, Limited: limited}}
	}
	u, _ := Fold(nil, nil, []Observation{o(10, 7, 5)}, nil, now)
	u, _ = Fold(u, nil, []Observation{o(10, 7, 5)}, nil, now.Add(time.Second))
	if u.Last24h != 10 || u.Denied24h != 7 || u.Limited24h != 5 {
		t.Fatalf("%+v", u)
	}
	u, _ = Fold(u, nil, []Observation{o(12, 9, 6)}, nil, now.Add(2*time.Second))
	if u.Denied24h != 9 || u.Limited24h != 6 {
		t.Fatalf("after growth: %+v", u)
	}
	// The key left and re-entered the replica's index: its counts began
	// again at zero, and all of them are new.
	u, _ = Fold(u, nil, []Observation{o(1, 8, 8)}, nil, now.Add(3*time.Second))
	if u.Last24h != 13 || u.Denied24h != 17 || u.Limited24h != 14 {
		t.Fatalf("after a restart: %+v", u)
	}
}

// TestExhaustedUntil: a key at its quota is exhausted until enough of its
// oldest hours fall out of the window.
func TestExhaustedUntil(t *testing.T) {
	h := func(hoursAgo int, allowed int64) kw.UsageHour {
		start := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC).Add(-time.Duration(hoursAgo) * time.Hour)
		return kw.UsageHour{Start: metav1.NewTime(start), Allowed: allowed}
	}
	now := time.Date(2026, 11, 24, 10, 20, 0, 0, time.UTC)
	u := &kw.Usage{Last24h: 1000, Hours: []kw.UsageHour{h(20, 300), h(5, 500), h(0, 200)}}
	if got := ExhaustedUntil(u, 1001, 1, now); got != nil {
		t.Fatalf("under the quota: exhausted until %v", got)
	}
	// 1000 used of 1000: the hour that began 20 hours ago falls out 24
	// hours after it began, leaving 700.
	want := time.Date(2026, 11, 24, 14, 0, 1, 0, time.UTC)
	if got := ExhaustedUntil(u, 1000, 1, now); got == nil || !got.Time.Equal(want) {
		t.Fatalf("exhausted until %v, want %v", got, want)
	}
	// 1000 used of 1002 with 3 replicas: fewer calls left than replicas,
	// none of which may allow one.
	if got := ExhaustedUntil(u, 1002, 3, now); got == nil {
		t.Fatal("2 calls left for 3 replicas: not exhausted")
	}
	if got := ExhaustedUntil(u, 1003, 3, now); got != nil {
		t.Fatalf("3 calls left for 3 replicas: exhausted until %v", got)
	}
	// 1000 used of 400: two hours must fall out.
	want = time.Date(2026, 11, 25, 5, 0, 1, 0, time.UTC)
	if got := ExhaustedUntil(u, 400, 1, now); got == nil || !got.Time.Equal(want) {
		t.Fatalf("exhausted until %v, want %v", got, want)
	}
}
