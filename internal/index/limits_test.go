package index

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// limited adds an ApiKey with limits and one key, and returns the key's
// identity as a lookup finds it.
func limited(t *testing.T, ix *Index, name string, lim Limits) (Identity, string) {
	t.Helper()
	nn := types.NamespacedName{Namespace: "limits", Name: name}
	k := key(t)
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	e, ok := ix.Lookup(k.ID)
	if !ok {
		t.Fatal("the key is not in the index")
	}
	return e.Identity, k.ID
}

// bucket is the reference model of a token bucket, in nanoseconds of
// credit: it fills at one nanosecond a nanosecond up to room, and a call
// takes interval of it.
type bucket struct {
	level, room, interval, last int64
}

func (b *bucket) take(t int64) bool {
	b.level = min(b.room, b.level+(t-b.last))
	b.last = t
	if b.level >= b.interval {
		b.level -= b.interval
		return true
	}
	return false
}

// FuzzRateMatchesTokenBucket: the lock-free GCRA decides every call as a
// plain token bucket would, for any rate, burst, number of replicas and
// arrival times (a fake clock: each step of the input moves it forward).
func FuzzRateMatchesTokenBucket(f *testing.F) {
	f.Add(uint16(50), uint16(50), uint8(1), []byte{0, 0, 0, 0, 20, 20, 200, 1, 1})
	f.Add(uint16(1), uint16(10), uint8(3), []byte{255, 0, 3, 9, 9, 9})
	f.Add(uint16(1000), uint16(1), uint8(2), make([]byte, 64))
	f.Fuzz(func(t *testing.T, rate, burst uint16, peers uint8, steps []byte) {
		if rate == 0 || burst == 0 || peers == 0 {
			return
		}
		ix := New()
		ix.SetPeers(int(peers))
		id, _ := limited(t, ix, "fuzz", Limits{PerSecond: int64(rate), Burst: int64(burst)})
		l := ix.limiterAt(id.lim)
		ref := bucket{room: l.room.Load(), interval: l.interval.Load()}
		ref.level = ref.room
		now := time.Unix(1_000_000, 0).UnixNano()
		ref.last = now
		for len(steps) >= 2 {
			// Each step: up to 65,535 × 37 µs (2.4 s) forward, then a call.
			now += int64(binary.LittleEndian.Uint16(steps)) * 37_000
			steps = steps[2:]
			want := ref.take(now)
			st := ix.Admit(id, time.Unix(0, now))
			if got := st.Reason == LimitOK; got != want {
				t.Fatalf("at %d: admitted %v, the token bucket says %v (state %+v)", now, got, want, st)
			}
			if st.Reason == LimitRate && st.RetryAfter < 1 {
				t.Fatalf("refused with Retry-After %d", st.RetryAfter)
			}
		}
	})
}

// TestRateBurstThenRefill: a key of 50/s with a burst of 100 gets 100
// calls at once, then one every 20 ms; the headers' figures follow.
func TestRateBurstThenRefill(t *testing.T) {
	ix := New()
	id, _ := limited(t, ix, "burst", Limits{PerSecond: 50, Burst: 100})
	now := time.Unix(1_000_000, 0)
	for i := range 100 {
		st := ix.Admit(id, now)
		if st.Reason != LimitOK {
			t.Fatalf("call %d of the burst refused", i)
		}
		if st.RateRemaining != int64(99-i) || st.PerSecond != 50 || st.Burst != 100 {
			t.Fatalf("call %d: %+v", i, st)
		}
	}
	st := ix.Admit(id, now)
	if st.Reason != LimitRate || st.RetryAfter != 1 || st.RateRemaining != 0 || st.RateReset != 2 {
		t.Fatalf("call 101: %+v; want rate_limited, retry after 1 s, bucket full in 2 s", st)
	}
	if st := ix.Admit(id, now.Add(20*time.Millisecond)); st.Reason != LimitOK {
		t.Fatalf("a call 20 ms later (one token): %+v", st)
	}
	if st := ix.Admit(id, now.Add(30*time.Millisecond)); st.Reason != LimitRate {
		t.Fatalf("a second call 30 ms later: %+v", st)
	}
}

// TestRateConcurrentCallsTakeExactlyTheBurst: 8 goroutines calling at
// once at one instant get exactly the burst between them (the race
// detector checks the bucket is lock-free and race-free).
func TestRateConcurrentCallsTakeExactlyTheBurst(t *testing.T) {
	ix := New()
	id, _ := limited(t, ix, "concurrent", Limits{PerSecond: 10, Burst: 500})
	now := time.Unix(1_000_000, 0)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if ix.Admit(id, now).Reason == LimitOK {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 500 {
		t.Fatalf("%d calls allowed at one instant; want the burst, 500", allowed.Load())
	}
}

// TestPeersShareTheRate: with 4 replicas each admits a quarter of the
// rate and of the burst.
func TestPeersShareTheRate(t *testing.T) {
	ix := New()
	id, _ := limited(t, ix, "peers", Limits{PerSecond: 100, Burst: 100})
	ix.SetPeers(4)
	now := time.Unix(1_000_000, 0)
	n := 0
	for range 200 {
		if ix.Admit(id, now).Reason == LimitOK {
			n++
		}
	}
	if n != 25 {
		t.Fatalf("one of 4 replicas allowed %d of a burst of 100; want 25", n)
	}
	// Over 10 s at 10 ms a call: 25/s here.
	n = 0
	for i := range 1000 {
		if ix.Admit(id, now.Add(time.Duration(i+1)*10*time.Millisecond)).Reason == LimitOK {
			n++
		}
	}
	if n != 250 {
		t.Fatalf("%d calls allowed in 10 s; want 250 (25/s)", n)
	}
}

// TestQuotaShareAndMark: a replica allows its share of what the quota has
// left since the status, counts what the status does not hold yet, and
// refuses a key the controller marked exhausted until it recovers.
func TestQuotaShareAndMark(t *testing.T) {
	ix := New()
	ix.SetReplica("r1")
	ix.SetPeers(2)
	nn := types.NamespacedName{Namespace: "limits", Name: "daily"}
	k := key(t)
	lim := Limits{PerDay: 1000}
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim, Quota: Quota{Used: 400}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	e, _ := ix.Lookup(k.ID)
	now := time.Unix(1_000_000, 0)
	allow := func(n int) int {
		got := 0
		for range n {
			if st := ix.Admit(e.Identity, now); st.Reason == LimitOK {
				ix.Count(e.Identity, Allowed, now)
				got++
			} else if st.Reason != LimitQuota || st.RetryAfter != int64(QuotaRetry/time.Second) {
				t.Fatalf("refused with %+v", st)
			}
		}
		return got
	}
	// 600 left, 2 replicas: 300 here.
	if got := allow(400); got != 300 {
		t.Fatalf("allowed %d; want 300, half of the 600 left", got)
	}
	// The status now holds 200 of this replica's 300 calls and 500 of the
	// other's: 1000 - 1100 left: none.
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim,
		Quota: Quota{Used: 400 + 200 + 500, Collected: map[string]int64{k.ID: 200}}})
	if got := allow(10); got != 0 {
		t.Fatalf("allowed %d over the quota", got)
	}
	// The window moved: 700 used, of which this replica's 300 (100 of
	// them not collected yet): 300 left, 150 each, less the 100 not yet
	// collected here.
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim,
		Quota: Quota{Used: 700, Collected: map[string]int64{k.ID: 200}}})
	if got := allow(100); got != 50 {
		t.Fatalf("allowed %d; want 50: a share of 150 less the 100 the status lacks", got)
	}
	// Marked exhausted: refused with the time it recovers.
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim,
		Quota: Quota{Used: 1000, Collected: map[string]int64{k.ID: 350}, ExhaustedUntil: now.Add(90 * time.Minute)}})
	st := ix.Admit(e.Identity, now)
	if st.Reason != LimitQuota || st.RetryAfter != 5400 || st.DayReset != 5400 {
		t.Fatalf("marked exhausted: %+v; want quota, retry after 5400 s", st)
	}
	// A peer goes: the share of what is left is taken again by 1.
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim,
		Quota: Quota{Used: 800, Collected: map[string]int64{k.ID: 350}}})
	ix.SetPeers(1)
	if got := allow(300); got != 200 {
		t.Fatalf("allowed %d; want 200, all that is left", got)
	}
}

// TestLimitsChangeLive: raising, removing and adding limits take effect
// on the next call, for the same key.
func TestLimitsChangeLive(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "limits", Name: "live"}
	k := key(t)
	set := func(lim Limits) Identity {
		ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: lim})
		e, ok := ix.Lookup(k.ID)
		if !ok {
			t.Fatal("lost the key")
		}
		return e.Identity
	}
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Limits: Limits{PerSecond: 1}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	e, _ := ix.Lookup(k.ID)
	now := time.Now() // a change of rate moves the bucket's debt at the real time
	if ix.Admit(e.Identity, now).Reason != LimitOK || ix.Admit(e.Identity, now).Reason != LimitRate {
		t.Fatal("1/s: want one call allowed, the next refused")
	}
	id := set(Limits{PerSecond: 1000, Burst: 1000})
	if st := ix.Admit(id, now); st.Reason != LimitOK || st.PerSecond != 1000 {
		t.Fatalf("raised to 1000/s: %+v", st)
	}
	id = set(Limits{})
	if id.Limited() {
		t.Fatal("limits removed, the key still has a limiter")
	}
	if st := ix.Admit(id, now); st.Reason != LimitOK || st.Limited() {
		t.Fatalf("no limits: %+v", st)
	}
	id = set(Limits{PerSecond: 2, Burst: 1})
	now = time.Now()
	if !id.Limited() || ix.Admit(id, now).Reason != LimitOK || ix.Admit(id, now).Reason != LimitRate {
		t.Fatal("limits added again: want a fresh bucket of 1")
	}
}

// TestAdmitAllocatesNothing: the hot path of a limited key.
func TestAdmitAllocatesNothing(t *testing.T) {
	ix := New()
	id, _ := limited(t, ix, "allocs", Limits{PerSecond: 1_000_000, Burst: 1_000_000, PerDay: 10_000_000_000})
	now := time.Unix(1_000_000, 0)
	if n := testing.AllocsPerRun(1000, func() { ix.Admit(id, now) }); n != 0 {
		t.Fatalf("Admit allocates %v times a call", n)
	}
}

// TestWatchKeepsTheQuotaStatus: what the watch keeps of an ApiKey is its
// spec and, only for a key with a daily quota, the status figures the
// replica's share is computed from.
func TestWatchKeepsTheQuotaStatus(t *testing.T) {
	perDay := int64(1000)
	until := metav1.NewTime(time.Unix(2_000_000, 0))
	status := kw.ApiKeyStatus{KeyID: "k", Scopes: "a",
		Usage: &kw.Usage{Last24h: 700, Denied24h: 5, Hours: []kw.UsageHour{{Allowed: 700}},
			Cursors: []kw.UsageCursor{{Replica: "r1", KeyID: "K1", Allowed: 300}, {Replica: "r2", KeyID: "K1", Allowed: 400}}},
		Quota: &kw.Quota{RequestsPerDay: 1000, Used: 700, ExhaustedUntil: &until}}
	quota := &kw.ApiKey{Spec: kw.ApiKeySpec{Limits: &kw.Limits{RequestsPerDay: &perDay}}, Status: *status.DeepCopy()}
	plain := &kw.ApiKey{Status: *status.DeepCopy()}
	slimObject(quota)
	slimObject(plain)
	if !reflect.DeepEqual(plain.Status, kw.ApiKeyStatus{}) {
		t.Fatalf("a key without a quota kept %+v", plain.Status)
	}
	if quota.Status.Usage.Hours != nil || quota.Status.KeyID != "" || quota.Status.Usage.Last24h != 700 ||
		len(quota.Status.Usage.Cursors) != 2 || !quota.Status.Quota.ExhaustedUntil.Equal(&until) {
		t.Fatalf("a key with a quota kept %+v", quota.Status)
	}
	q := quotaOf(quota, "r1")
	if q.Used != 700 || len(q.Collected) != 1 || q.Collected["K1"] != 300 || !q.ExhaustedUntil.Equal(until.Time) {
		t.Fatalf("quota read for replica r1: %+v", q)
	}
}

// TestWatchKeepsOnlyGuardedNamespaceLabels: whoever may create namespaces
// may give each 1.5 MiB of labels. The index keeps of a namespace only the
// labels a policy may select on, as a list page arrives and as a watch
// event does.
func TestWatchKeepsOnlyGuardedNamespaceLabels(t *testing.T) {
	ix := New()
	st := &indexStore{ix: ix, kind: namespacesKind, synced: make(chan struct{})}
	ns := func(name string) *corev1.Namespace {
		labels := map[string]string{"keyward.dev/write-access": "true", "kubernetes.io/metadata.name": name}
		for i := range 1000 {
			labels[fmt.Sprintf("inflate-%04d", i)] = strings.Repeat("x", 63)
		}
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels,
			Annotations: map[string]string{"big": strings.Repeat("y", 200<<10)}}}
	}
	st.beginList()
	st.feed(ns("listed")) // a list page
	w := ns("watched")
	slimObject(w) // a watch event (liveWatch)
	if err := st.Add(w); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"listed", "watched"} {
		got := ix.nsLabels[name]
		if len(got) != 1 || got["keyward.dev/write-access"] != "true" {
			t.Errorf("namespace %s: the index keeps %d labels", name, len(got))
		}
	}
	if len(w.Annotations) != 0 || len(w.Labels) != 1 {
		t.Errorf("a watched namespace keeps %d annotations and %d labels", len(w.Annotations), len(w.Labels))
	}
}
