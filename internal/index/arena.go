package index

// What checks read: shards of slots and records, laid out without
// pointers (see the package doc), and the two writes a check can see:
// publish and unpublish one key ID.

import (
	"sync"
	"unsafe"

	"keyward.dev/keyward/internal/keys"
)

// none is the end of a list of uint32 indexes.
const none = ^uint32(0)

const shardCount = 64

// slot is one published key: what a check compares and judges, and the
// number of its record. Slots are the values of a shard's table: one probe
// finds all of it.
type slot struct {
	sum keys.Sum
	// until is when the key stops working (Entry.until), or -1 when its
	// ApiKey is archived or its record revoked.
	until int64
	rec   uint32
	// owner is the ApiKey the key is published for: the one claimant of a
	// key ID no other ApiKey claims (ownership.go).
	owner uint32
}

// record is what a check hands on about a key (its ID, its ApiKey's name,
// its scopes) and the key's counters. It holds no pointer: the scopes are
// a number in the shard's table of sets, and the name is in the record
// when it is short (most are), else a span of the shard's byte chunks.
// Records are changed only under the shard's write lock and counted only
// under its read lock, so compaction can move them, counters and all,
// without losing a count.
//
// A record is two cache lines, 128 bytes, and a chunk of them starts on a
// line: what a check reads is in the first line, what it writes in the
// second. With the name in the first line, a check waits for one memory
// access after its slot, not two (the record, then the name it names).
type record struct {
	id     idKey
	set    uint32
	serial uint32
	// lim is the ApiKey's limiter, 0 for none.
	lim uint32
	// nameLen is the name's length; names of up to inlineName bytes are
	// in short, longer ones in long.
	nameLen uint16
	short   [inlineName]byte
	usage   Usage
	long    struct{ chunk, off uint32 }
}

// inlineName fills the record's first cache line: "namespace/name" of up
// to 34 bytes is kept in the record.
const inlineName = 34

// span is a string in a shard's byte chunks.
type span struct{ chunk, off, n uint32 }

const (
	byteChunk = 16 << 10 // bytes per chunk of names
)

type shard struct {
	mu sync.RWMutex
	// m maps a key ID's 16 bytes to its slot, in the same time whether
	// the key ID is there or not (table.go).
	m table
	// recs are the records, in chunks that never move, numbered in order.
	// Records no slot names any more are dead until a compaction drops
	// them. Every chunk is free of pointers: the collector marks it and
	// moves on, however many keys it holds.
	recs array[record]
	dead int
	// bytes hold the records' names.
	bytes chunks
	// sets are the scope sets the shard's records name, by shard-local
	// number; setNo maps the index's set numbers to them.
	sets   []*scopeSet
	setNo  map[uint32]uint32
	serial uint32
}

func (s *shard) record(n uint32) *record { return s.recs.at(n) }

// alloc appends an empty record and returns its number.
func (s *shard) alloc() (uint32, *record) {
	n := s.recs.add()
	return n, s.recs.at(n)
}

// newRecord appends the record of a newly published key.
func (s *shard) newRecord(id idKey, name string, set uint32) uint32 {
	n, r := s.alloc()
	s.serial++
	r.id, r.set, r.serial = id, set, s.serial
	s.setName(r, name)
	return n
}

// setName stores a record's name, in the record when it fits.
func (s *shard) setName(r *record, name string) {
	r.nameLen = uint16(len(name)) // a namespace and a name: at most 317 bytes
	if len(name) <= inlineName {
		copy(r.short[:], name)
		return
	}
	sp := s.bytes.put(name)
	r.long.chunk, r.long.off = sp.chunk, sp.off
}

// name is a record's name, without a copy: a record's name never changes
// once written, and a compaction writes new records rather than these.
func (s *shard) name(r *record) string { return s.bytes.name(r) }

// name is the name of a record whose long name, if any, these chunks hold.
func (c *chunks) name(r *record) string {
	if r.nameLen <= inlineName {
		return unsafe.String(&r.short[0], int(r.nameLen))
	}
	return c.view(span{chunk: r.long.chunk, off: r.long.off, n: uint32(r.nameLen)})
}

// chunks hold strings in large byte chunks whose written bytes never
// change: one object for the collector instead of one per string, and a
// string viewing them stays valid for as long as anyone holds it.
type chunks struct{ b [][]byte }

// put copies v into the chunks.
func (c *chunks) put(v string) span {
	last := len(c.b) - 1
	if last < 0 || cap(c.b[last])-len(c.b[last]) < len(v) {
		c.b = append(c.b, make([]byte, 0, max(byteChunk, len(v))))
		last++
	}
	off := len(c.b[last])
	c.b[last] = append(c.b[last], v...)
	return span{chunk: uint32(last), off: uint32(off), n: uint32(len(v))}
}

// view is the string a span names, without a copy.
func (c *chunks) view(sp span) string {
	if sp.n == 0 {
		return ""
	}
	return unsafe.String(&c.b[sp.chunk][sp.off], sp.n)
}

// localSet returns the shard's number for one of the index's scope sets.
func (s *shard) localSet(global uint32, set *scopeSet) uint32 {
	if n, ok := s.setNo[global]; ok {
		return n
	}
	n := uint32(len(s.sets))
	s.sets = append(s.sets, set)
	s.setNo[global] = n
	return n
}

// identity is what a check hands on about the record rec; the caller holds
// the shard's lock.
func (s *shard) identity(n uint32, shardNo uint8) Identity {
	r := s.record(n)
	return Identity{id: unsafe.String(&r.id[0], len(r.id)), key: s.name(r), set: s.sets[r.set],
		rec: n, serial: r.serial, lim: r.lim, shard: shardNo}
}

// compact copies the live records, their counters and names into fresh
// chunks once most are dead (keys removed or taken over). Checks that hold
// an identity keep the old name and record chunks alive until they are
// done.
func (s *shard) compact() {
	if s.dead < arrayChunk || s.dead < s.m.len() {
		return
	}
	old, oldBytes := s.recs, s.bytes
	s.recs, s.bytes, s.dead = array[record]{}, chunks{}, 0
	s.m.each(func(_ *idKey, sl *slot) {
		from := old.at(sl.rec)
		n, to := s.alloc()
		to.id, to.set, to.serial, to.lim = from.id, from.set, from.serial, from.lim
		s.setName(to, oldBytes.name(from))
		to.usage.copyFrom(&from.usage) // no check counts meanwhile: this shard is write-locked
		sl.rec = n
	})
}

// publish makes fresh the slot of key ID k for the ApiKey full; the
// ownership rule (ownership.go) has chosen full as the key's owner. The
// same key of the same ApiKey keeps its record, and so its counts; a new
// owner starts a new record.
func (ix *Index) publish(k *rkey, full string, setID, lim uint32, fresh slot) {
	s := ix.shard(&k.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	ix.writes.Add(1)
	set := s.localSet(setID, ix.sets[setID])
	prev, dup := s.m.get(&k.id)
	switch {
	case dup && s.name(s.record(prev.rec)) == full:
		fresh.rec = prev.rec
		s.record(prev.rec).set = set
		s.record(prev.rec).lim = lim
	default:
		if dup {
			s.dead++ // the owner changed: the previous owner's record is dead
		} else {
			ix.size.Add(1)
		}
		fresh.rec = s.newRecord(k.id, full, set)
		s.record(fresh.rec).lim = lim
	}
	s.m.set(k.id, fresh)
	s.compact()
}

// unpublish removes the slot of a key ID that no ApiKey owns any more.
func (ix *Index) unpublish(id *idKey) {
	s := ix.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.m.del(id) {
		return
	}
	ix.writes.Add(1)
	s.dead++
	ix.size.Add(-1)
	s.compact()
}

// array is a growable array in chunks that never move: it holds no slack
// beyond its last chunk, and growing copies nothing. Elements are numbered
// from 0; at returns a pointer that stays valid.
type array[T any] struct {
	chunks []*[arrayChunk]T
	n      uint32
}

const arrayChunk = 256

func (a *array[T]) at(i uint32) *T { return &a.chunks[i/arrayChunk][i%arrayChunk] }

// add appends a zero element and returns its number.
func (a *array[T]) add() uint32 {
	if a.n == uint32(len(a.chunks))*arrayChunk {
		a.chunks = append(a.chunks, new([arrayChunk]T))
	}
	a.n++
	return a.n - 1
}

func (a *array[T]) len() int { return int(a.n) }
