package index

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestTableAgainstMap runs random sets, deletes and probes against a Go
// map: through every growth from the smallest table to 50,000 key IDs and
// back down to a few, the table holds exactly what the map holds, a probe
// finds what get finds, and a key ID it does not hold is a miss whose
// decoy is one of its eight entries.
func TestTableAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	newID := func() idKey {
		var k idKey
		for i := range k {
			k[i] = byte('0' + rng.IntN(62)) // any nonzero bytes do
		}
		return k
	}
	tab, model := newTable(), map[idKey]slot{}
	var ids []idKey
	check := func(step string) {
		t.Helper()
		if tab.len() != len(model) {
			t.Fatalf("%s: table holds %d, map %d", step, tab.len(), len(model))
		}
		seen := 0
		tab.each(func(k *idKey, v *slot) {
			seen++
			if want, ok := model[*k]; !ok || want != *v {
				t.Fatalf("%s: each gave %s=%+v; map has %+v, %v", step, k.String(), *v, want, ok)
			}
		})
		if seen != len(model) {
			t.Fatalf("%s: each visited %d of %d", step, seen, len(model))
		}
		for _, k := range ids {
			want, ok := model[k]
			got, found := tab.get(&k)
			sl, hit, vacant, _ := tab.probe(&k)
			switch {
			case found != ok || got != want:
				t.Fatalf("%s: get(%s) = %+v, %v; want %+v, %v", step, k.String(), got, found, want, ok)
			case ok && (hit != 1 || vacant != 0 || *sl != want):
				t.Fatalf("%s: probe(%s) = %+v, hit %d, vacant %d; want %+v", step, k.String(), *sl, hit, vacant, want)
			case !ok && hit != 0:
				t.Fatalf("%s: probe(%s) hit a key ID the table does not hold", step, k.String())
			}
			// The footprint names the buckets and the entry the probe read.
			b1, b2, entry := tab.footprint(&k)
			if b := entry / bucketSize; b != b1 && b != b2 || &tab.vals[b][entry%bucketSize] != sl {
				t.Fatalf("%s: footprint(%s) = %d, %d, entry %d; the probe read another entry", step, k.String(), b1, b2, entry)
			}
			if fb, fi, ok := tab.find(&k); ok && entry != fb*bucketSize+uint64(fi) {
				t.Fatalf("%s: footprint(%s) names entry %d; the key ID is at %d", step, k.String(), entry, fb*bucketSize+uint64(fi))
			}
		}
	}
	for step := range 120_000 {
		switch op := rng.IntN(10); {
		case op < 6 || len(ids) == 0 || step < 60_000 && op < 8: // set a new key ID
			k := newID()
			v := slot{rec: uint32(step), until: int64(step)}
			v.sum[0] = byte(step)
			tab.set(k, v)
			model[k] = v
			ids = append(ids, k)
		case op < 8: // set one again
			k := ids[rng.IntN(len(ids))]
			v := slot{rec: uint32(step) + 1}
			tab.set(k, v)
			model[k] = v
		default: // delete one, present or not
			k := ids[rng.IntN(len(ids))]
			_, ok := model[k]
			if tab.del(&k) != ok {
				t.Fatalf("step %d: del(%s) = %v, want %v", step, k.String(), !ok, ok)
			}
			delete(model, k)
		}
		if step%20_000 == 0 {
			check("during")
		}
	}
	check("after")
	if len(model) < 40_000 {
		t.Fatalf("only %d key IDs at the end: the test did not fill the table", len(model))
	}
	for i, k := range ids {
		if i%3 != 0 {
			tab.del(&k)
			delete(model, k)
		}
	}
	check("after deleting two in three")
	// Misses: their decoy entry is one of the probed ID's eight, and says
	// rightly whether it is empty.
	for range 10_000 {
		k := newID()
		sl, hit, vacant, _ := tab.probe(&k)
		b1, b2 := tab.buckets(tab.hash(&k))
		var entry *idKey
		for _, b := range [2]uint64{b1, b2} {
			for i := range tab.vals[b] {
				if &tab.vals[b][i] == sl {
					entry = &tab.ids[b][i]
				}
			}
		}
		if hit != 0 || entry == nil {
			t.Fatalf("miss of %s: hit %d, decoy in its buckets: %v", k.String(), hit, entry != nil)
		}
		if empty := *entry == (idKey{}); empty != (vacant == 1) {
			t.Fatalf("miss of %s: decoy empty %v, vacant %d", k.String(), empty, vacant)
		}
	}
}

// TestTableProbeMatchesWholeKeyIDs: a probe matches a key ID on all 16
// bytes, whatever their pattern: halves alike (against empty entries),
// and IDs crafted from a held one so that a comparison of the halves
// combined wrongly (x0^k0 | x1, then ^k1) would take them for it.
func TestTableProbeMatchesWholeKeyIDs(t *testing.T) {
	tab := newTable()
	var held []idKey
	for i := range 500 {
		var k idKey
		copy(k[:], fmt.Sprintf("%016d", i*7919+1))
		tab.set(k, slot{rec: uint32(i)})
		held = append(held, k)
	}
	try := func(k idKey) {
		t.Helper()
		if _, ok := tab.get(&k); ok {
			return
		}
		if _, hit, _, _ := tab.probe(&k); hit != 0 {
			t.Fatalf("probe of %q, which the table does not hold, is a hit", k.String())
		}
	}
	for c := byte('0'); c <= 'z'; c++ {
		try(idKey(bytes.Repeat([]byte{c}, 16)))
	}
	for _, x := range held {
		x0, x1 := binary.LittleEndian.Uint64(x[:8]), binary.LittleEndian.Uint64(x[8:])
		for _, k0 := range []uint64{x0 ^ 1, x0 ^ 0x0100, 0, x1} {
			var k idKey
			binary.LittleEndian.PutUint64(k[:8], k0)
			binary.LittleEndian.PutUint64(k[8:], (x0^k0)|x1)
			if k != (idKey{}) {
				try(k)
			}
		}
	}
}

// TestTableLoad: the table stays at least 40 % full as it grows (it grows
// by half at nine in ten), so a key costs at most about 2.5 entries.
func TestTableLoad(t *testing.T) {
	tab := newTable()
	var k idKey
	for i := range 200_000 {
		for j := range 8 {
			k[j] = byte(i >> (8 * j % 32))
		}
		k[8], k[15] = 1, byte(i)
		tab.set(k, slot{rec: uint32(i)})
		if load := float64(tab.len()) / float64(len(tab.ids)*bucketSize); i > 1000 && (load < 0.4 || load > 0.9) {
			t.Fatalf("%d key IDs in %d entries: load %.2f", tab.len(), len(tab.ids)*bucketSize, load)
		}
	}
}

// TestSlotLayout: probe loads one word of each of slots 0, 1 and 2 of a
// bucket to bring in the bucket's three cache lines of slots; that holds
// while a slot is 48 bytes and a bucket's slots 192.
func TestSlotLayout(t *testing.T) {
	if s, row := unsafe.Sizeof(slot{}), unsafe.Sizeof([bucketSize]slot{}); s != 48 || row != 192 {
		t.Fatalf("a slot is %d bytes and a bucket's slots %d: make probe load one word in each cache line of a bucket's slots", s, row)
	}
}

// TestRecordLayout: a record is two cache lines, what a check reads
// (through the inline name) in the first and the counters it writes in the
// second, and a chunk of records starts on a line.
func TestRecordLayout(t *testing.T) {
	var r record
	if size, read, usage := unsafe.Sizeof(r), unsafe.Offsetof(r.short)+inlineName, unsafe.Offsetof(r.usage); size != 128 || read > 64 || usage != 64 {
		t.Fatalf("a record is %d bytes, its name ends at %d, its counters start at %d: want 128, ≤ 64, 64", size, read, usage)
	}
	var a array[record]
	for range 3 * arrayChunk {
		a.add()
	}
	for _, c := range a.chunks {
		if p := uintptr(unsafe.Pointer(c)); p%64 != 0 {
			t.Fatalf("a chunk of records at %#x, not on a cache line", p)
		}
	}
}

// TestListPageBoundsATenantsMemory: a replica decodes one list page of
// ApiKeys at a time, and a tenant with edit in its namespace can make each
// ApiKey MaxApiKeyBytes (config/admission/size.yaml bounds it; without that
// policy, 1.5 MiB). A page holds at most decodeFactor times its JSON of
// the heap at once (TestListOfLargeApiKeysCostsWhatTheBudgetAssumes
// measures it).
// A page must fit well inside the replica's 320 Mi memory limit
// (config/manager/authn.yaml), beside its index. So must a page of
// namespaces, which whoever may create them can make as large as etcd
// takes.
func TestListPageBoundsATenantsMemory(t *testing.T) {
	const budget = 128 << 20
	if page := float64(ListPageSize*MaxApiKeyBytes) * decodeFactor; page > budget {
		t.Fatalf("a page of %d ApiKeys of %d KiB can take %.0f MiB of a tenant's making; keep it within %d MiB",
			ListPageSize, MaxApiKeyBytes>>10, page/(1<<20), budget>>20)
	}
	if page := float64(NamespacePageSize*MaxObjectBytes) * decodeFactor; page > budget {
		t.Fatalf("a page of %d namespaces of %d KiB can take %.0f MiB of a namespace creator's making; keep it within %d MiB",
			NamespacePageSize, MaxObjectBytes>>10, page/(1<<20), budget>>20)
	}
}
