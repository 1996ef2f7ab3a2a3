package authn

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
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

// TestTimingUnknownKeyID: a key ID the index does not hold costs what a
// known one with a wrong secret costs: the same table probe, digest
// comparison, record read and counter write (on a decoy), without a
// branch between them. Before, an unknown key ID skipped the record and
// the counter, and answered 12 % sooner at the median, 37 % on average.
// Each unknown key ID is a key's twin (decoyTwins): it reads the same
// memory as the key, so that what is compared is the code path.
func TestTimingUnknownKeyID(t *testing.T) {
	dudect(t, mustGenerate(t).Secret, "known key ID", func(*index.ApiKey) string { return mustGenerate(t).Digest() },
		"unknown key ID", unknownID)
}

// unknownID is the class of key IDs the index does not hold: the key of
// that class stays indexed, and its twin, a key ID never indexed, is
// presented instead.
func unknownID(*index.ApiKey) string { return "" }

func mustGenerate(t *testing.T) keys.Key {
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// timingClass sets what a class of key has: its ApiKey's fields, and the
// digest of its record, which it returns; "" presents the key under a key
// ID no record holds instead (unknownID).
type timingClass func(*index.ApiKey) string

// dudect times checks presenting secret to the keys of class a and of
// class b, and fails if Welch's t tells the two apart.
//
// Every key serves in both classes: the index holds one pool of keys, and
// in each round of 10,000 samples every key is given a class at random
// before that round's samples. With a class per key for good, a million
// samples would tell apart the fraction of a nanosecond by which some keys
// are faster to reach than others (added earlier, a record straddling
// fewer cache lines, a fuller bucket), a difference of layout, not of what
// a check does. Ten rounds were not enough: over 30 runs of the
// mismatch-position test t spread with a standard deviation of 1.66
// instead of the 1 of two identical classes, and reached 4.85 (a false
// alarm in one run of 30; one make test failed that way); with a hundred
// rounds it spread by 1.07 and stayed under 3.5.
func dudect(t *testing.T, secret, nameA string, a timingClass, nameB string, b timingClass) {
	t.Helper()
	worst, at := 0.0, ""
	for _, c := range measure(t, secret, nameA, a, nameB, b) {
		if tv := welch(c.w[0], c.w[1]); math.Abs(tv) > math.Abs(worst) {
			worst, at = tv, fmt.Sprintf("p%v", c.pct)
		}
	}
	if math.Abs(worst) >= 4.5 {
		t.Errorf("timing tells %s from %s: |t| = %.2f (below %s) ≥ 4.5", nameA, nameB, math.Abs(worst), at)
	}
}

// cut is the two classes' timings below one percentile of all of them.
type cut struct {
	pct float64
	w   [2]welford
}

// measure times checks presenting secret to the keys of class a and of
// class b, as dudect describes, and returns the cuts it judges by.
func measure(t *testing.T, secret, nameA string, a timingClass, nameB string, b timingClass) []cut {
	t.Helper()
	if raceEnabled {
		t.Skip("the race detector's instrumentation dominates the timings")
	}
	samples := 1_000_000
	if testing.Short() {
		samples = 200_000
	}
	const pool, perRound = 10_000, 10_000
	rounds := samples / perRound
	ix := index.New()
	ids := make([]string, pool)
	var unknown []string // the twins of ids, found once the keys are indexed
	for i := range ids {
		ids[i] = mustGenerate(t).ID
	}
	presented := make([]string, pool)
	names := make([]types.NamespacedName, pool)
	for i := range names {
		names[i] = types.NamespacedName{Namespace: "timing", Name: fmt.Sprintf("k%05d", i)}
	}
	d := &Decider{Index: ix}
	required := Scopes{"timing:read"}
	now := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	classOf := make([]uint8, pool)
	twin := make([]bool, pool)
	class := make([]uint8, 0, samples)
	took := make([]float64, 0, samples)
	creds := make([]Credentials, perRound)
	picked := make([]int, perRound)
	for range rounds {
		for i, id := range ids {
			c := uint8(rng.IntN(2))
			classOf[i] = c
			nn := names[i]
			uid := types.UID("uid-" + nn.String())
			k := &index.ApiKey{UID: uid, Scopes: []string{"timing:read"}}
			digest := [2]timingClass{a, b}[c](k)
			twin[i] = digest == "" // the key stays indexed; its unknown twin is presented
			if twin[i] {
				digest = mustGenerate(t).Digest()
			}
			ix.SetApiKey(nn, k)
			ix.SetRecord(nn, &index.Record{Owner: uid, Keys: []index.Key{{ID: id, Digest: digest}}})
		}
		ix.MarkSynced()
		if unknown == nil && slices.Contains(twin, true) {
			unknown = decoyTwins(t, ix, ids)
		}
		for i := range presented {
			presented[i] = ids[i]
			if twin[i] {
				presented[i] = unknown[i]
			}
		}
		// The inputs are drawn before timing starts: only Decide is timed.
		// Each sample's key ID is copied to the sample's own place in one
		// block, so that where it lies does not depend on its class (a
		// twin's string would lie elsewhere than its key's: one class's
		// reads of the key ID were a fraction of a nanosecond slower).
		var inOrder strings.Builder
		for j := range creds {
			picked[j] = rng.IntN(pool)
		}
		for j := range creds {
			inOrder.WriteString(presented[picked[j]])
		}
		all := inOrder.String()
		for j := range creds {
			creds[j] = Credentials{ID: all[j*keys.KeyIDLen : (j+1)*keys.KeyIDLen], Secret: secret}
		}
		// Take the marks of counted keys, as the endpoint's usage reports
		// do every few seconds, and warm up without counting: each key's
		// first timed check is its first since a report, which marks it
		// again (an atomic write a decoy's check did not make, until the
		// write was made for both). A report after the warm-up instead
		// would take the marks of the known class's keys only, which
		// leaves the caches in a state that differs by class.
		ix.EachChanged(true, nil, func(index.Identity, *index.Usage, bool) {})
		d.NoUsage = true
		for j := range min(len(creds), 20_000) { // warm up
			d.Decide(creds[j], required, now)
		}
		d.NoUsage = false
		for j := range creds {
			start := time.Now()
			v := d.Decide(creds[j], required, now)
			took = append(took, float64(time.Since(start)))
			class = append(class, classOf[picked[j]])
			if v.Allowed || v.Reason != ReasonInvalidKey {
				t.Fatalf("sample %d: %+v", j, v)
			}
		}
		// Checked after timing, so that its probes warm nothing.
		if unknown != nil && !twinsHold(ix, ids, unknown) {
			t.Fatal("the twins no longer read their keys' memory: the index rearranged its table")
		}
	}

	sorted := slices.Clone(took)
	slices.Sort(sorted)
	var cuts []cut
	for _, pct := range []float64{100, 99, 95, 90, 75, 50} {
		limit := sorted[min(int(float64(len(sorted))*pct/100), len(sorted)-1)]
		c := cut{pct: pct}
		for i, x := range took {
			if x <= limit {
				c.w[class[i]].add(x)
			}
		}
		t.Logf("below p%v (%.0f ns): %s %.1f ns (n=%d), %s %.1f ns (n=%d), t = %.2f",
			pct, limit, nameA, c.w[0].mean, c.w[0].n, nameB, c.w[1].mean, c.w[1].n, welch(c.w[0], c.w[1]))
		cuts = append(cuts, c)
	}
	return cuts
}

// decoyTwins finds, for each key ID of ids (all indexed), one the index
// does not hold whose probe reads the same memory: the same shard, the
// same two buckets of its table, and the key's own entry as its decoy, so
// that its check reads the key's slot, record and counter too. Only the
// code path differs, a miss's instead of a hit's.
//
// Unknown key IDs drawn at random would compare different memory as well:
// distinct ones share decoys by the birthday bound (10,000 of them land on
// about 6,300 keys), and a miss reads a bucket a hit does not. A million
// samples tell those apart (Welch's t 10 to 55 with random unknown key
// IDs; 3 to 6 below the 99th percentile with twins that only share the
// decoy), though the means are under 4 % apart: a difference in what the
// test draws, not in what a check does. A caller probing one key ID again
// and again warms its buckets and entry, or its decoy's, alike. Twins
// compare the two paths over the same memory, as every key serving in
// both classes compares them over the same layout.
func decoyTwins(t *testing.T, ix *index.Index, ids []string) []string {
	t.Helper()
	want := make(map[index.Footprint]int, len(ids))
	for i, id := range ids {
		f, ok := ix.Footprint(id)
		if !ok {
			t.Fatalf("key ID %d has no footprint", i)
		}
		want[f] = i
	}
	// A random key ID falls in a given key's shard, bucket pair and entry
	// about once in a million draws (64 shards, ~60 buckets a shard, 8
	// entries), so the search draws cheap ones (not crypto/rand) of the
	// same form: about ten million for 10,000 keys, a second or two.
	rng := rand.New(rand.NewPCG(3, 4))
	var buf [keys.KeyIDLen]byte
	twins, left := make([]string, len(ids)), len(ids)
	for drawn := 0; left > 0; drawn++ {
		if drawn > 200_000_000 {
			t.Fatalf("no twin for %d of %d keys after %d key IDs", left, len(ids), drawn)
		}
		for j := range buf {
			buf[j] = base62[rng.IntN(len(base62))]
		}
		f, _ := ix.Footprint(string(buf[:]))
		i, ok := want[f]
		if !ok || twins[i] != "" {
			continue
		}
		if _, found := ix.Probe(string(buf[:])); found {
			continue // one of the keys itself
		}
		twins[i] = string(buf[:])
		left--
	}
	return twins
}

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// twinsHold reports whether every twin still reads its key's memory (an
// index that rearranged its table would move them).
func twinsHold(ix *index.Index, ids, twins []string) bool {
	for i := range twins {
		f, _ := ix.Footprint(ids[i])
		g, _ := ix.Footprint(twins[i])
		if _, found := ix.Probe(twins[i]); found || f != g {
			return false
		}
	}
	return true
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
