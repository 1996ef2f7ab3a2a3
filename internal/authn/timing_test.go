package authn

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
)

// The timing tests are dudect-style (Reparaz, Balasch, Verbauwhede, "Dude,
// is my code constant time?", 2017): two classes of request, interleaved
// at random so drift in the machine's speed hits both alike, each check
// timed; Welch's t between the classes' timings, over all samples and over
// the samples below several percentiles (the cropping that removes
// interrupts and preemptions), must stay under 4.5, dudect's threshold for
// "no leak found".
//
// What is secret is the secret: key IDs are public (DESIGN.md: shown to
// readers, in logs and metrics), so what a check's time may not tell is
// how close a guess came, or anything about a key to a caller without its
// secret.

// TestTimingDigestMismatchPosition: a guess whose hash differs from the
// key's digest in its first byte takes as long as one that differs only in
// its last, so no guess can be refined byte by byte.
func TestTimingDigestMismatchPosition(t *testing.T) {
	secret := mustGenerate(t).Secret
	sum := sha256.Sum256([]byte(secret))
	flipped := func(at int) timingClass {
		return func(*index.ApiKey) string {
			s := sum
			s[at] ^= 0x01
			return keys.DigestPrefix + hex.EncodeToString(s[:])
		}
	}
	dudect(t, secret, "mismatch in the first byte", flipped(0), "mismatch in the last byte", flipped(len(sum)-1))
}

// TestTimingKeyStateToWrongSecret: a wrong secret takes as long against an
// archived or expired key as against an active one: only the holder of the
// secret learns a key's state.
func TestTimingKeyStateToWrongSecret(t *testing.T) {
	wrong := mustGenerate(t).Secret
	active := func(*index.ApiKey) string { return mustGenerate(t).Digest() }
	dudect(t, wrong, "active", active, "archived",
		func(k *index.ApiKey) string { k.Archived = true; return mustGenerate(t).Digest() })
	dudect(t, wrong, "active", active, "expired",
		func(k *index.ApiKey) string { k.ExpiresAt = time.Unix(1, 0); return mustGenerate(t).Digest() })
}

func mustGenerate(t *testing.T) keys.Key {
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// timingClass sets what a class of key has: its ApiKey's fields, and the
// digest of its record, which it returns.
type timingClass func(*index.ApiKey) string

// dudect times checks presenting secret to the keys of class a and of
// class b, and fails if Welch's t tells the two apart.
//
// Every key serves in both classes: the index holds one pool of keys, and
// in each of several rounds every key is given a class at random before
// that round's samples. With a class per key for good, a million samples
// would tell apart the fraction of a nanosecond by which some keys are
// faster to reach than others (added earlier, a record straddling fewer
// cache lines, a fuller map group), a difference of layout, not of what a
// check does.
func dudect(t *testing.T, secret, nameA string, a timingClass, nameB string, b timingClass) {
	t.Helper()
	if raceEnabled {
		t.Skip("the race detector's instrumentation dominates the timings")
	}
	samples := 1_000_000
	if testing.Short() {
		samples = 200_000
	}
	const pool, rounds = 10_000, 10
	ix := index.New()
	ids := make([]string, pool)
	for i := range ids {
		ids[i] = mustGenerate(t).ID
	}
	d := &Decider{Index: ix}
	required := Scopes{"timing:read"}
	now := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	classOf := make([]uint8, pool)
	class := make([]uint8, 0, samples)
	took := make([]float64, 0, samples)
	creds := make([]Credentials, samples/rounds)
	picked := make([]int, samples/rounds)
	for range rounds {
		for i, id := range ids {
			c := uint8(rng.IntN(2))
			classOf[i] = c
			nn := types.NamespacedName{Namespace: "timing", Name: fmt.Sprintf("k%05d", i)}
			uid := types.UID("uid-" + nn.String())
			k := &index.ApiKey{UID: uid, Scopes: []string{"timing:read"}}
			digest := [2]timingClass{a, b}[c](k)
			ix.SetApiKey(nn, k)
			ix.SetRecord(nn, &index.Record{Owner: uid, Keys: []index.Key{{ID: id, Digest: digest}}})
		}
		ix.MarkSynced()
		// The inputs are drawn before timing starts: only Decide is timed.
		for j := range creds {
			picked[j] = rng.IntN(pool)
			creds[j] = Credentials{ID: ids[picked[j]], Secret: secret}
		}
		for j := range min(len(creds), 20_000) { // warm up
			d.Decide(creds[j], required, now)
		}
		for j := range creds {
			start := time.Now()
			v := d.Decide(creds[j], required, now)
			took = append(took, float64(time.Since(start)))
			class = append(class, classOf[picked[j]])
			if v.Allowed || v.Reason != ReasonInvalidKey {
				t.Fatalf("sample %d: %+v", j, v)
			}
		}
	}

	worst, at := 0.0, ""
	sorted := slices.Clone(took)
	slices.Sort(sorted)
	for _, pct := range []float64{100, 99, 95, 90, 75, 50} {
		limit := sorted[min(int(float64(len(sorted))*pct/100), len(sorted)-1)]
		var w [2]welford
		for i, x := range took {
			if x <= limit {
				w[class[i]].add(x)
			}
		}
		tv := welch(w[0], w[1])
		t.Logf("below p%v (%.0f ns): %s %.1f ns (n=%d), %s %.1f ns (n=%d), t = %.2f",
			pct, limit, nameA, w[0].mean, w[0].n, nameB, w[1].mean, w[1].n, tv)
		if math.Abs(tv) > math.Abs(worst) {
			worst, at = tv, fmt.Sprintf("p%v", pct)
		}
	}
	if math.Abs(worst) >= 4.5 {
		t.Errorf("timing tells %s from %s: |t| = %.2f (below %s) ≥ 4.5", nameA, nameB, math.Abs(worst), at)
	}
}

// welford is a running mean and variance.
type welford struct {
	n       int
	mean, m float64
}

func (w *welford) add(x float64) {
	w.n++
	d := x - w.mean
	w.mean += d / float64(w.n)
	w.m += d * (x - w.mean)
}

func (w welford) variance() float64 { return w.m / float64(w.n-1) }

// welch is Welch's t statistic of two samples.
func welch(a, b welford) float64 {
	return (a.mean - b.mean) / math.Sqrt(a.variance()/float64(a.n)+b.variance()/float64(b.n))
}
