package index

// A shard's key IDs, in a table whose lookup takes the same time whether
// the key ID is there or not.

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"unsafe"
)

// table maps key IDs to slots, as a map[idKey]slot would, except that a
// probe reads the same memory and runs the same instructions for a key ID
// the table holds as for one it does not: a check's time does not tell
// whether a key ID was ever issued (docs/hardening.md).
//
// It is a cuckoo hash table (Pagh and Rodler, 2001) with buckets of four.
// A key ID lives in one of the two buckets its hash names, so a probe reads
// both buckets' key IDs (64 bytes each: a cache line), compares all eight
// without stopping at a match, and hands back the one slot the match
// selects; for a miss, a decoy entry its hash chooses among the eight,
// which the caller treats as it would a wrong secret's key and then
// discards. A Go map cannot do this: its miss stops at the first empty
// control byte, its hit goes on to compare the key and read the value.
//
// Key IDs and slots sit in two arrays without pointers: the collector
// never scans them. An empty entry has the zero key ID, which no key ID
// has: SetRecord keeps only base62 key IDs, and Probe refuses the zero
// one. The table grows by half when nine entries in ten
// are full, or when an insert finds no place; it never shrinks, as a Go
// map does not.
type table struct {
	seed maphash.Seed
	ids  []idBucket
	vals [][bucketSize]slot
	n    int
}

const (
	bucketSize = 4
	// maxKicks bounds the displacements of one insert before the table
	// grows instead.
	maxKicks = 256
	// minBuckets is the size of a new table: 8 entries.
	minBuckets = 2
)

type idBucket [bucketSize]idKey

func newTable() table {
	return table{seed: maphash.MakeSeed(), ids: make([]idBucket, minBuckets), vals: make([][bucketSize]slot, minBuckets)}
}

// len is the number of key IDs in the table.
func (t *table) len() int { return t.n }

// hash is key ID k's hash: its low and high halves name its two buckets.
func (t *table) hash(k *idKey) uint64 { return maphash.Bytes(t.seed, k[:]) }

// buckets are the two buckets a key ID of hash h may live in (the same
// one, rarely).
func (t *table) buckets(h uint64) (b1, b2 uint64) {
	nb := uint64(len(t.ids))
	b1, _ = bits.Mul64(h<<32, nb)
	b2, _ = bits.Mul64(h&^(1<<32-1), nb)
	return b1, b2
}

// probe returns the slot of key ID k and 1, or a decoy slot and 0, doing
// the same work either way: no branch and no memory access depends on
// whether or where k is found, only on its hash. The decoy is one of k's
// eight entries, chosen by its hash, so misses spread over the table as
// hits do. vacant is 1 when the decoy entry is empty, and spare is hash
// bits for the caller's own decoys then.
func (t *table) probe(k *idKey) (sl *slot, hit, vacant uint64, spare uint32) {
	h := t.hash(k)
	b1, b2 := t.buckets(h)
	k0, k1 := binary.LittleEndian.Uint64(k[:8]), binary.LittleEndian.Uint64(k[8:])
	x, y := &t.ids[b1], &t.ids[b2]
	// Load both buckets' slots now, beside their key IDs: the slot the
	// probe returns depends on the comparisons below, and since no branch
	// depends on them the CPU cannot guess which and load it early; at a
	// million keys that load would wait a whole cache miss for them. One
	// load in each of a bucket's three cache lines of slots (a slot is 48
	// bytes) brings them in; KeepAlive keeps the compiler from dropping
	// loads whose values go unused.
	v, w := &t.vals[b1], &t.vals[b2]
	warm := v[0].rec ^ v[1].rec ^ v[2].rec ^ w[0].rec ^ w[1].rec ^ w[2].rec
	runtime.KeepAlive(warm)
	var at, empty uint64
	for i := range uint64(bucketSize) {
		x0, x1 := binary.LittleEndian.Uint64(x[i][:8]), binary.LittleEndian.Uint64(x[i][8:])
		y0, y1 := binary.LittleEndian.Uint64(y[i][:8]), binary.LittleEndian.Uint64(y[i][8:])
		// Parentheses: | and ^ bind alike in Go.
		e := isZero((x0 ^ k0) | (x1 ^ k1))
		hit |= e
		at |= e * i
		e = isZero((y0 ^ k0) | (y1 ^ k1))
		hit |= e
		at |= e * (bucketSize + i)
		empty |= isZero(x0|x1)<<i | isZero(y0|y1)<<(bucketSize+i) // << binds before |
	}
	// On a miss at is 0: take the decoy entry instead (hit-1 is all ones
	// then, and 0 on a hit).
	m := h * 0x9e3779b97f4a7c15
	at |= (m >> 61) & (hit - 1)
	// at is 4 or more for an entry of the second bucket; when b1 == b2 and
	// k is there, both halves match the same entry and at names it too.
	b := b1 ^ ((b1 ^ b2) & -(at / bucketSize))
	return &t.vals[b][at%bucketSize], hit, (empty >> at) & 1, uint32(m >> 16)
}

// isZero is 1 when x is 0 and 0 otherwise, without a branch.
func isZero(x uint64) uint64 { return ((x | -x) >> 63) ^ 1 }

// find is where key ID k is, for writers, who need no constant time.
func (t *table) find(k *idKey) (b uint64, i int, ok bool) {
	b1, b2 := t.buckets(t.hash(k))
	for _, b := range [2]uint64{b1, b2} {
		for i := range t.ids[b] {
			if t.ids[b][i] == *k {
				return b, i, true
			}
		}
	}
	return 0, 0, false
}

// get returns the slot of key ID k.
func (t *table) get(k *idKey) (slot, bool) {
	if b, i, ok := t.find(k); ok {
		return t.vals[b][i], true
	}
	return slot{}, false
}

// set stores the slot of key ID k, k not being the zero key ID.
func (t *table) set(k idKey, v slot) {
	if b, i, ok := t.find(&k); ok {
		t.vals[b][i] = v
		return
	}
	if (t.n+1)*10 > len(t.ids)*bucketSize*9 {
		t.grow()
	}
	for !t.place(&k, &v) {
		t.grow() // k and v now hold the entry the last displacement left out
	}
	t.n++
}

// place puts an entry into one of its buckets, displacing others to their
// other bucket as needed. When it gives up it returns false with k and v
// holding the entry left without a place, never losing one.
func (t *table) place(k *idKey, v *slot) bool {
	for range maxKicks {
		b1, b2 := t.buckets(t.hash(k))
		for _, b := range [2]uint64{b1, b2} {
			for i := range t.ids[b] {
				if t.ids[b][i] == (idKey{}) {
					t.ids[b][i], t.vals[b][i] = *k, *v
					return true
				}
			}
		}
		// Both buckets are full: take the place of an entry of either at
		// random, and carry that one on to its other bucket.
		b, i := [2]uint64{b1, b2}[rand.IntN(2)], rand.IntN(bucketSize)
		*k, t.ids[b][i] = t.ids[b][i], *k
		*v, t.vals[b][i] = t.vals[b][i], *v
	}
	return false
}

// grow moves every entry into a table half as large again.
func (t *table) grow() {
	old, oldVals := t.ids, t.vals
	nb := len(old) + (len(old)+1)/2
	for {
		t.ids, t.vals = make([]idBucket, nb), make([][bucketSize]slot, nb)
		if t.refill(old, oldVals) {
			return
		}
		nb += (nb + 1) / 2
	}
}

// refill places the entries of old buckets into the (empty) table.
func (t *table) refill(old []idBucket, oldVals [][bucketSize]slot) bool {
	for b := range old {
		for i, k := range old[b] {
			if k == (idKey{}) {
				continue
			}
			v := oldVals[b][i]
			if !t.place(&k, &v) {
				return false
			}
		}
	}
	return true
}

// del removes key ID k and reports whether it was there.
func (t *table) del(k *idKey) bool {
	b, i, ok := t.find(k)
	if !ok {
		return false
	}
	t.ids[b][i], t.vals[b][i] = idKey{}, slot{}
	t.n--
	return true
}

// each calls fn with every key ID and its slot, which fn may change but
// not move: no set or del while it runs.
func (t *table) each(fn func(k *idKey, v *slot)) {
	for b := range t.ids {
		for i := range t.ids[b] {
			if t.ids[b][i] != (idKey{}) {
				fn(&t.ids[b][i], &t.vals[b][i])
			}
		}
	}
}

// footprint is the table memory a probe of key ID k reads: its two
// buckets, and the entry it ends on (bucket*bucketSize + position), found
// where probe itself points, so that it cannot drift from probe.
func (t *table) footprint(k *idKey) (b1, b2, entry uint64) {
	b1, b2 = t.buckets(t.hash(k))
	sl, _, _, _ := t.probe(k)
	base := uintptr(unsafe.Pointer(&t.vals[0][0]))
	entry = uint64((uintptr(unsafe.Pointer(sl)) - base) / unsafe.Sizeof(slot{}))
	return b1, b2, entry
}
