package usage

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
)

// deltaIndex is an index of n keys (namespace d, names k0...), with their
// identities for counting.
func deltaIndex(t testing.TB, n int) (*index.Index, []index.Identity) {
	t.Helper()
	ix := index.New()
	ids := make([]index.Identity, n)
	for i := range n {
		k, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		nn := types.NamespacedName{Namespace: "d", Name: fmt.Sprintf("k%d", i)}
		uid := types.UID("uid-" + nn.String())
		ix.SetApiKey(nn, &index.ApiKey{UID: uid, Scopes: []string{"a"}})
		ix.SetRecord(nn, &index.Record{Owner: uid, Keys: []index.Key{{ID: k.ID, Digest: k.Digest()}}})
		e, _ := ix.Lookup(k.ID)
		ids[i] = e.Identity
	}
	ix.MarkSynced()
	return ix, ids
}

// TestDeltaSendsWhatChangedAndWhatWasNotAcknowledged: a report holds the
// keys counted since the last one; a report whose answer was lost (the
// next request does not acknowledge it) is sent again; full sends all.
func TestDeltaSendsWhatChangedAndWhatWasNotAcknowledged(t *testing.T) {
	ix, ids := deltaIndex(t, 100)
	r := &Reporter{Index: ix, Replica: "r1"}
	now := time.Now()
	count := func(is ...int) {
		for _, i := range is {
			ix.Count(ids[i], index.Allowed, now)
		}
	}
	names := func(d Delta) map[string]uint64 {
		m := map[string]uint64{}
		for _, c := range d.Keys {
			m[c.Key] = c.Allowed
		}
		return m
	}
	count(1, 2, 2, 3)
	d := r.Report(0, false)
	if got := names(d); len(got) != 3 || got["d/k2"] != 2 || d.ID != 1 || d.Replica != "r1" {
		t.Fatalf("first report %+v", d)
	}
	if d = r.Report(d.ID, false); len(d.Keys) != 0 {
		t.Fatalf("nothing counted, yet %+v", d)
	}
	count(5, 5)
	d3 := r.Report(d.ID, false)
	if got := names(d3); len(got) != 1 || got["d/k5"] != 2 {
		t.Fatalf("third report %+v", d3)
	}
	// The answer to the third was lost: the fourth request acknowledges
	// the second. k5 comes again, with k7 counted since.
	count(7)
	d4 := r.Report(d.ID, false)
	if got := names(d4); len(got) != 2 || got["d/k5"] != 2 || got["d/k7"] != 1 {
		t.Fatalf("after a lost answer %+v", d4)
	}
	if d = r.Report(d4.ID, false); len(d.Keys) != 0 {
		t.Fatalf("acknowledged, yet %+v", d)
	}
	// A collector that starts over asks for everything.
	if got := names(r.Report(0, true)); len(got) != 5 {
		t.Fatalf("full report %v", got)
	}
}

// TestDeltaFoldLosesNothing: checks counted while reports are taken, some
// answers lost, a collector that folds what arrives: at the end every
// check is in the usage once, never twice.
func TestDeltaFoldLosesNothing(t *testing.T) {
	ix, ids := deltaIndex(t, 200)
	r := &Reporter{Index: ix, Replica: "r1"}
	var counted atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := index.Allowed
				if rng.IntN(4) == 0 {
					o = index.WrongSecret
				}
				ix.Count(ids[rng.IntN(len(ids))], o, time.Now())
				counted.Add(1)
			}
		})
	}
	usages := map[string]*kw.Usage{}
	fold := func(d Delta) {
		for _, c := range d.Keys {
			k, _ := c.KeyCount()
			usages[c.Key], _ = Fold(usages[c.Key], nil, []Observation{{Replica: d.Replica, KeyCount: k}}, nil, time.Now())
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var ack uint64
	for range 300 {
		d := r.Report(ack, false)
		if rng.IntN(5) == 0 {
			continue // the answer is lost: not folded, not acknowledged
		}
		fold(d)
		ack = d.ID
	}
	close(stop)
	wg.Wait()
	fold(r.Report(ack, false))
	var total int64
	for _, u := range usages {
		total += u.Last24h + u.Denied24h
	}
	if total != counted.Load() {
		t.Fatalf("the usage holds %d checks; %d were counted", total, counted.Load())
	}
}

func TestCompactRoundTrip(t *testing.T) {
	c := Compact{Key: "team-a/reader", KeyID: "AbCdEfGhIjKlMnOp", Allowed: 1 << 40, Denied: 7, Limited: 3, LastUsed: 1796000000}
	b, err := json.Marshal(c)
	if err != nil || string(b) != `["team-a/reader","AbCdEfGhIjKlMnOp",1099511627776,7,3,1796000000]` {
		t.Fatalf("%s %v", b, err)
	}
	var back Compact
	if err := json.Unmarshal(b, &back); err != nil || back != c {
		t.Fatalf("%+v %v", back, err)
	}
	for _, bad := range []string{`{}`, `["a","b",1,2,3]`, `["a","b",-1,2,3,4]`, `["a","b","x",2,3,4]`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// TestDeltaReadsProtocol1: during a rolling upgrade the controller may ask
// a replica not yet upgraded for protocol 2; that replica ignores v=2 and
// answers its full Report of protocol 1, which the controller reads as a
// Delta with every key and no ID (so it asks for everything again), and
// folds exactly as it would have.
func TestDeltaReadsProtocol1(t *testing.T) {
	ix, ids := deltaIndex(t, 3)
	now := time.Now()
	ix.Count(ids[0], index.Allowed, now)
	ix.Count(ids[0], index.Allowed, now)
	ix.Count(ids[2], index.InsufficientScope, now)
	old, err := json.Marshal(Snapshot(ix, "old-replica"))
	if err != nil {
		t.Fatal(err)
	}
	var d Delta
	if err := json.Unmarshal(old, &d); err != nil {
		t.Fatalf("a report of protocol 1 does not decode as a Delta: %v\n%s", err, old)
	}
	if d.Replica != "old-replica" || d.ID != 0 || len(d.Keys) != 2 {
		t.Fatalf("%+v, want old-replica's two counted keys and no ID", d)
	}
	got := map[string][2]uint64{}
	for _, c := range d.Keys {
		k, ok := c.KeyCount()
		if !ok {
			t.Fatalf("%+v does not name its ApiKey", c)
		}
		got[k.Namespace+"/"+k.Name+"/"+k.KeyID] = [2]uint64{k.Allowed, k.Denied}
	}
	want := map[string][2]uint64{
		"d/k0/" + ids[0].KeyID(): {2, 0},
		"d/k2/" + ids[2].KeyID(): {0, 1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("decoded %v, want %v", got, want)
	}
	for _, bad := range []string{`{"namespace":"d","name":"k0"}`, `{"keyId":"x","allowed":"many"}`} {
		var c Compact
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// BenchmarkCollectionRound: one collection round of one replica with n
// keys, 10 % of them counted since the last round: the bytes of the full
// report (protocol 1, what the controller read every 5 s) against the
// delta (protocol 2), and the replica's time to build the delta.
func BenchmarkCollectionRound(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			ix, ids := deltaIndex(b, n)
			now := time.Now()
			for _, id := range ids {
				ix.Count(id, index.Allowed, now) // every key has been used once
			}
			r := &Reporter{Index: ix, Replica: "r1"}
			ack := r.Report(0, true).ID
			full, _ := json.Marshal(Snapshot(ix, "r1"))
			var size int
			for b.Loop() {
				b.StopTimer()
				for i := 0; i < n; i += 10 {
					ix.Count(ids[i], index.Allowed, now)
				}
				b.StartTimer()
				d := r.Report(ack, false)
				body, _ := json.Marshal(d)
				size, ack = len(body), d.ID
			}
			b.ReportMetric(float64(len(full)), "B-protocol1")
			b.ReportMetric(float64(size), "B-delta")
			b.ReportMetric(float64(size)/float64(n/10), "B/changed-key")
		})
	}
}
