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
