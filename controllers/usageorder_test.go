package controllers

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// TestUsageWriteOrderBound simulates the usage write budget: every one of
// n keys gets calls every round (its shown figure off by a random share,
// some by a lot), b writes a round. The longest any key waits for a write
// must stay within the documented bound, 5 × ⌈n/b⌉ rounds (docs/usage.md),
// and in practice near ⌈n/b⌉.
func TestUsageWriteOrderBound(t *testing.T) {
	for _, c := range []struct{ n, b int }{{2000, 200}, {2000, 20}, {2000, 2}} {
		t.Run(fmt.Sprintf("%d keys, %d writes a round", c.n, c.b), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.b), 1))
			const interval = 5 * time.Second
			lastWrite := make([]int, c.n) // round of the last write
			for i := range lastWrite {
				lastWrite[i] = -rng.IntN(c.n / c.b) // a warm start: staggered
			}
			r := (c.n + c.b - 1) / c.b
			worst := 0
			idx := make([]int, c.n)
			for round := 0; round < 20*r; round++ {
				prio := make([]priority, c.n)
				for i := range prio {
					share := rng.Float64() * 0.1
					if rng.IntN(20) == 0 {
						share = rng.Float64() * 10 // a key whose shown figure is far off
					}
					prio[i] = priority{score: score(time.Duration(round-lastWrite[i])*interval, share)}
					idx[i] = i
				}
				sort.Slice(idx, func(a, b int) bool { return before(prio[idx[a]], prio[idx[b]]) })
				for _, i := range idx[:c.b] {
					if round >= 5*r { // after the warm-up
						worst = max(worst, round-lastWrite[i])
					}
					lastWrite[i] = round
				}
			}
			for i := range lastWrite { // and those never picked since
				worst = max(worst, 20*r-1-lastWrite[i])
			}
			t.Logf("⌈n/b⌉ = %d rounds; the longest wait for a write: %d rounds (%.1f×)", r, worst, float64(worst)/float64(r))
			if worst > 5*r {
				t.Errorf("a key waited %d rounds; the bound is %d", worst, 5*r)
			}
		})
	}
}
