package app

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// TestRevocationAcrossReplicasUnderLoad archives 200 keys one by one while
// three endpoint replicas answer a steady load of other keys, and times each
// from sending the archive PATCH to the last replica refusing it. Once every
// replica has refused a key, no replica may allow it again; the load's keys
// stay allowed throughout. The times are logged (docs/benchmarks.md), not
// asserted: this machine's noise is not the code's.
func TestRevocationAcrossReplicasUnderLoad(t *testing.T) {
	ns := namespace(t, "replicas")
	startController(t)
	replicas := []*endpoint{startEndpoint(t, cfg, ns), startEndpoint(t, cfg, ns), startEndpoint(t, cfg, ns)}
	const archivals, steady = 200, 20
	names := make([]string, archivals+steady)
	for i := range names {
		names[i] = fmt.Sprintf("r%03d", i)
	}
	tokens := issue(t, ns, names...)
	for _, n := range names {
		for _, e := range replicas {
			eventually(t, 10*time.Second, n+" to verify on every replica", func() bool { return e.check(t, tokens[n], "") == 200 })
		}
	}

	// The steady load: keys that are never archived, on every replica.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, refused atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok := tokens[names[archivals+rand.IntN(steady)]]
				if code, _ := replicas[rand.IntN(len(replicas))].status(tok, ""); code == 200 {
					served.Add(1)
				} else {
					refused.Add(1)
				}
			}
		}()
	}

	ctx := context.Background()
	var call, last []time.Duration
	for _, n := range names[:archivals] {
		key := &kw.ApiKey{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, key); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(key.DeepCopy())
		key.Spec.Archived = true
		sent := time.Now()
		if err := k8s.Patch(ctx, key, patch); err != nil {
			t.Fatal(err)
		}
		call = append(call, time.Since(sent))
		// Each replica in turn until every one has refused the key.
		pending := slices.Clone(replicas)
		for len(pending) > 0 {
			if time.Since(sent) > 10*time.Second {
				t.Fatalf("%s still verifies on %d replicas 10 s after its archival", n, len(pending))
			}
			pending = slices.DeleteFunc(pending, func(e *endpoint) bool { return e.check(t, tokens[n], "") == 401 })
		}
		last = append(last, time.Since(sent))
		// From that moment on, no replica allows it.
		for range 3 {
			for i, e := range replicas {
				if code := e.check(t, tokens[n], ""); code != 401 {
					t.Fatalf("%s answered %d on replica %d after every replica had refused it", n, code, i)
				}
			}
		}
	}
	close(stop)
	wg.Wait()
	for _, n := range names[:archivals] {
		for i, e := range replicas {
			if code := e.check(t, tokens[n], ""); code != 401 {
				t.Fatalf("archived %s answered %d on replica %d at the end", n, code, i)
			}
		}
	}
	if refused.Load() != 0 || served.Load() == 0 {
		t.Fatalf("the steady load: %d allowed, %d refused; want every check allowed", served.Load(), refused.Load())
	}
	slices.Sort(call)
	slices.Sort(last)
	q := func(d []time.Duration, p int) time.Duration { return d[len(d)*p/100].Round(10 * time.Microsecond) }
	t.Logf("%d archivals, 3 replicas, %d checks of other keys meanwhile: call p50 %s p99 %s; to the last replica refusing p50 %s p99 %s max %s",
		archivals, served.Load(), q(call, 50), q(call, 99), q(last, 50), q(last, 99), last[len(last)-1].Round(10*time.Microsecond))
}
