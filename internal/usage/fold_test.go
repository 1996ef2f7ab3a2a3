package usage

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
		var l *Live
		if live != nil {
			l = Answered(live, nil)
		}
		u, last = Fold(u, last, o, l, clock)
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
	u2, last2 := Fold(u, last, []Observation{obs("a", "K1", 1, 0, now)}, Answered(map[string]bool{"a": true}, nil), now)
	if !Changed(u, last, u2, last2) {
		t.Fatal("a new call is not a change")
	}
	u3, last3 := Fold(u2, last2, []Observation{obs("a", "K1", 1, 0, now)}, Answered(map[string]bool{"a": true}, nil), now.Add(time.Second))
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

// A cursor goes as soon as its run can never report again: its pod
// answered under another run (a restart), or its pod is no longer behind
// the Service. A run that did not answer and whose pod is still there keeps
// its cursor; a round in which a replica did not answer drops nothing.
func TestFoldDropsCursorsOfRunsGoneForGood(t *testing.T) {
	clock := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	var u *kw.Usage
	runs := func(names ...string) map[string]bool {
		m := map[string]bool{}
		for _, n := range names {
			m[n] = true
		}
		return m
	}
	step := func(live *Live, o ...Observation) {
		t.Helper()
		clock = clock.Add(5 * time.Second)
		u, _ = Fold(u, nil, o, live, clock)
	}
	cursors := func() []string {
		var names []string
		for _, c := range u.Cursors {
			names = append(names, c.Replica+"/"+c.KeyID)
		}
		slices.Sort(names)
		return names
	}
	want := func(allowed int64, names ...string) {
		t.Helper()
		if got := cursors(); !slices.Equal(got, names) || u.Last24h != allowed {
			t.Fatalf("cursors %v and %d allowed, want %v and %d", got, u.Last24h, names, allowed)
		}
	}
	const a1, a2, b1, c1 = "authn-a-0000000a", "authn-a-00000a02", "authn-b-0000000b", "authn-c-0000000c"
	pods := runs("authn-a", "authn-b", "authn-c")
	step(Answered(runs(a1, b1, c1), pods), obs(a1, "K1", 10, 0, clock), obs(b1, "K1", 5, 0, clock), obs(c1, "K1", 1, 0, clock))
	want(16, a1+"/K1", b1+"/K1", c1+"/K1")
	// authn-a restarts (a2) while authn-c is not ready (not collected, its
	// pod still there): a1's cursor goes, c1's stays.
	step(Answered(runs(a2, b1), pods), obs(a2, "K1", 3, 0, clock))
	want(19, a2+"/K1", b1+"/K1", c1+"/K1")
	if Due(u, Answered(runs(a2, b1), pods), clock) {
		t.Fatal("nothing is gone, yet Due says fold again")
	}
	// authn-c is ready again, the same run: its total is not counted again.
	step(Answered(runs(a2, b1, c1), pods), obs(c1, "K1", 1, 0, clock))
	want(19, a2+"/K1", b1+"/K1", c1+"/K1")
	// A round a replica did not answer drops nothing, even of a pod gone.
	step(nil)
	want(19, a2+"/K1", b1+"/K1", c1+"/K1")
	// authn-c's pod is gone (scaled down): its cursor goes though nothing
	// came in, and Due says so first.
	gone := runs("authn-a", "authn-b")
	if !Due(u, Answered(runs(a2, b1), gone), clock) {
		t.Fatal("a cursor of a pod gone, and Due does not say fold again")
	}
	step(Answered(runs(a2, b1), gone))
	want(19, a2+"/K1", b1+"/K1")
	// A run name of another form (a static --usage-endpoints replica named
	// by flag) keeps its cursor a Window after it last moved.
	step(Answered(runs(a2, b1, "static"), gone), obs("static", "K1", 2, 0, clock))
	step(Answered(runs(a2, b1), gone))
	want(21, a2+"/K1", b1+"/K1", "static/K1")
	clock = clock.Add(Window)
	step(Answered(runs(a2, b1), gone))
	want(0, a2+"/K1", b1+"/K1")
}

// Past MaxCursors (which the rules keep far off), the cursors of runs that
// answered stay and the others go, least recently moved first: a status
// the API server refuses would freeze the figures.
func TestFoldCapsCursors(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	u := &kw.Usage{}
	for i := range MaxCursors + 100 {
		u.Cursors = append(u.Cursors, kw.UsageCursor{Replica: fmt.Sprintf("r%d", i), KeyID: "K1", Allowed: 1,
			SeenAt: metav1.NewTime(now.Add(-time.Duration(i) * time.Minute))})
	}
	oldest := u.Cursors[len(u.Cursors)-1].Replica
	if !Due(u, nil, now) {
		t.Fatal("too many cursors, and Due does not say fold again")
	}
	nu, _ := Fold(u, nil, []Observation{obs(oldest, "K1", 2, 0, now)}, Answered(map[string]bool{oldest: true}, nil), now)
	if len(nu.Cursors) != MaxCursors || nu.Cursors[0].Replica != oldest || nu.Last24h != 1 {
		t.Fatalf("%d cursors, first %s, %d allowed; want %d, the run that answered first, 1",
			len(nu.Cursors), nu.Cursors[0].Replica, nu.Last24h, MaxCursors)
	}
	for _, c := range nu.Cursors[1:] {
		if n, _ := strconv.Atoi(c.Replica[1:]); n >= MaxCursors-1 {
			t.Fatalf("cursor %s kept: the least recently moved should have gone", c.Replica)
		}
	}
}

func TestHostOf(t *testing.T) {
	for run, host := range map[string]string{
		"keyward-authn-7d9f-x2x9q-0a1b2c3d": "keyward-authn-7d9f-x2x9q",
		"h-00000000":                        "h",
		"-00000000":                         "",
		"static":                            "",
		"host-0A1B2C3D":                     "",
		"host-0a1b2c3":                      "",
		// A host of 48 bytes may have been cut from a longer pod name,
		// which it shares with its sibling pods: never judged by host.
		strings.Repeat("p", 47) + "-0a1b2c3d": strings.Repeat("p", 47),
		strings.Repeat("p", 48) + "-0a1b2c3d": "",
	} {
		if got := HostOf(run); got != host {
			t.Errorf("HostOf(%q) = %q, want %q", run, got, host)
		}
	}
}

// MaxCursors is the CRD's maxItems for status.usage.cursors: a status with
// more is refused, which is what the cap avoids.
func TestMaxCursorsIsTheCRDs(t *testing.T) {
	b, err := os.ReadFile("../../config/crd/bases/keyward.dev_apikeys.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)\n(\s+)cursors:\n.*?\n\s+maxItems: (\d+)\n`).FindSubmatch(b)
	if m == nil || string(m[2]) != strconv.Itoa(MaxCursors) {
		t.Fatalf("the CRD's maxItems for cursors: %q, want %d", m, MaxCursors)
	}
}
