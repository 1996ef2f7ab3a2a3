// Package index keeps, in memory, what the auth endpoint needs to check a
// key: key ID → digest, scopes, state and expiry. It is fed by a watch on
// ApiKeys and ApiKeyRecords and answers lookups without any I/O.
//
// The index is laid out for the garbage collector as much as for lookups:
// an endpoint holds 100,000 keys and more, and each GC cycle marks every
// object and scans every pointer the index holds, a cost each check pays a
// share of. So nothing the index holds per key has a pointer: what a
// check compares (digest, state, expiry) sits in the values of maps whose
// keys and values hold none (one probe finds it all); what it hands on
// (key ID, ApiKey name, scope set number) and the key's counters sit in
// records in fixed chunks; the writer's per-ApiKey data in flat slices;
// the strings in append-only byte chunks, whose bytes never change once
// written, so a check can keep a string after the index moved on.
package index

import (
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"k8s.io/apimachinery/pkg/types"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/policy"
)

// Entry is a copy of one verifiable key, taken in one step under the
// index's lock: a reader never sees half an update.
type Entry struct {
	Sum keys.Sum
	// Archived: the ApiKey is archived or its record revoked.
	Archived bool
	// expiresAt (ApiKey spec.expiresAt) and revokesAt (end of a rotation's
	// grace period), Unix nanoseconds, 0 for never.
	expiresAt, revokesAt int64
	Identity
}

// ExpiredAt reports whether the key no longer works at now: expiry and the
// end of a grace period are judged at request time, so a late controller
// cannot extend a key.
func (e *Entry) ExpiredAt(now time.Time) bool {
	n := now.UnixNano()
	return e.expiresAt != 0 && n >= e.expiresAt || e.revokesAt != 0 && n >= e.revokesAt
}

// Identity names a key and what it may do, for the answer to a check. It
// stays valid, unchanged, for as long as anyone holds it, whatever the
// index does meanwhile: its strings are views of bytes the index never
// writes again. The zero Identity is no key.
type Identity struct {
	id, key string
	set     *scopeSet
	// rec and serial let Count find the record again: at rec unless a
	// compaction moved it, and never another ApiKey's record since.
	rec, serial uint32
	shard       uint8
}

// Known reports whether the identity is a key's.
func (id Identity) Known() bool { return id.set != nil }

// KeyID is the key's public ID.
func (id Identity) KeyID() string { return id.id }

// Key is the ApiKey's namespace/name.
func (id Identity) Key() string { return id.key }

// Namespace is the ApiKey's namespace.
func (id Identity) Namespace() string { ns, _, _ := strings.Cut(id.key, "/"); return ns }

// Name is the ApiKey's name.
func (id Identity) Name() string { _, n, _ := strings.Cut(id.key, "/"); return n }

// Scopes are the scopes the key may use.
func (id Identity) Scopes() []string { return id.set.scopes }

// ScopesHeader is the scopes joined by ",", as a header value, shared by
// every key with the same scopes.
func (id Identity) ScopesHeader() []string { return id.set.header }

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// ApiKey is what the index needs of an ApiKey.
type ApiKey struct {
	Scopes    []string
	Archived  bool
	ExpiresAt time.Time
}

// Key is what the index needs of one recorded key.
type Key struct {
	ID        string
	Digest    string
	RevokesAt time.Time
}

// Record is what the index needs of an ApiKeyRecord.
type Record struct {
	Keys    []Key
	Revoked bool
}

type idKey [keys.KeyIDLen]byte

func keyOf(id string) (k idKey, ok bool) {
	if len(id) != len(k) {
		return k, false
	}
	copy(k[:], id)
	return k, true
}

func (k *idKey) String() string { return unsafe.String(&k[0], len(k)) }

// none is the end of a list of uint32 indexes.
const none = ^uint32(0)

// --- What checks read: shards of slots and records. ---

const shardCount = 64

// slot is one published key: what a check compares and judges, and the
// number of its record. Slots are the values of a shard's map: one probe
// finds all of it.
type slot struct {
	sum                  keys.Sum
	expiresAt, revokesAt int64
	rec                  uint32
	archived             bool
}

// record is what a check hands on about a key (its ID, its ApiKey's name,
// its scopes) and the key's counters. It holds no pointer: the name is a
// span of the shard's byte chunks and the scopes a number in the shard's
// table of sets. Records are changed only under the shard's write lock and
// counted only under its read lock, so compaction can move them, counters
// and all, without losing a count.
type record struct {
	id     idKey
	name   span
	set    uint32
	serial uint32
	usage  Usage
}

// span is a string in a shard's byte chunks.
type span struct{ chunk, off, n uint32 }

const (
	recChunk  = 256      // records per chunk
	byteChunk = 16 << 10 // bytes per chunk of names
)

type shard struct {
	mu sync.RWMutex
	// m maps a key ID's 16 bytes to its slot: keys and values without
	// pointers, which the collector never scans.
	m map[idKey]slot
	// recs are the records, in chunks that never move, numbered in order.
	// Records no slot names any more are dead until a compaction drops
	// them. Every chunk is free of pointers: the collector marks it and
	// moves on, however many keys it holds.
	recs []*[recChunk]record
	nrec uint32
	dead int
	// bytes hold the records' names.
	bytes chunks
	// sets are the scope sets the shard's records name, by shard-local
	// number; setNo maps the index's set numbers to them.
	sets   []*scopeSet
	setNo  map[uint32]uint32
	serial uint32
}

func (s *shard) record(n uint32) *record { return &s.recs[n/recChunk][n%recChunk] }

// alloc appends an empty record and returns its number.
func (s *shard) alloc() (uint32, *record) {
	if s.nrec == uint32(len(s.recs))*recChunk {
		s.recs = append(s.recs, new([recChunk]record))
	}
	n := s.nrec
	s.nrec++
	return n, s.record(n)
}

// newRecord appends the record of a newly published key.
func (s *shard) newRecord(id idKey, name string, set uint32) uint32 {
	n, r := s.alloc()
	s.serial++
	r.id, r.name, r.set, r.serial = id, s.bytes.put(name), set, s.serial
	return n
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

// str copies v into the chunks and returns the copy.
func (c *chunks) str(v string) string { return c.view(c.put(v)) }

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
	return Identity{id: unsafe.String(&r.id[0], len(r.id)), key: s.bytes.view(r.name), set: s.sets[r.set],
		rec: n, serial: r.serial, shard: shardNo}
}

// compact copies the live records, their counters and names into fresh
// chunks once most are dead (keys removed or taken over). Checks that hold
// an identity keep the old name and record chunks alive until they are
// done.
func (s *shard) compact() {
	if s.dead < recChunk || s.dead < len(s.m) {
		return
	}
	old, oldBytes := s.recs, s.bytes
	s.recs, s.nrec, s.bytes, s.dead = nil, 0, chunks{}, 0
	for k, sl := range s.m {
		from := &old[sl.rec/recChunk][sl.rec%recChunk]
		n, to := s.alloc()
		to.id, to.name, to.set, to.serial = from.id, s.bytes.put(oldBytes.view(from.name)), from.set, from.serial
		to.usage.copyFrom(&from.usage) // no check counts meanwhile: this shard is write-locked
		sl.rec = n
		s.m[k] = sl
	}
}

// --- What updates read and write: owners (ApiKeys) and recorded keys. ---

// owner is all the index holds for one ApiKey, with no pointers.
type owner struct {
	hasApiKey, archived bool
	hasRecord, revoked  bool
	expiresAt           int64
	// own are the ApiKey's scopes, interned; granted are those its
	// namespace may grant under the ApiKeyPolicies: what checks see and
	// the scopes header says (own itself when nothing is restricted).
	own, granted uint32
	// keys is the first of the recorded keys (a list through rkey.next):
	// while both the ApiKey and the record exist, each has a slot.
	keys uint32
}

func (o *owner) published() bool { return o.hasApiKey && o.hasRecord }

// rkey is one recorded key, its digest parsed: 32 bytes, not 71 characters.
type rkey struct {
	id        idKey
	sum       keys.Sum
	revokesAt int64 // Unix nanoseconds, 0 for never
	next      uint32
}

// Index maps key IDs to entries. Lookups take one shard's read lock and do
// no allocation; updates rebuild the slots of one ApiKey.
type Index struct {
	seed   maphash.Seed
	shards [shardCount]shard

	mu sync.Mutex // serialises writers; guards everything below
	// names maps "namespace/name" (strings from nameBytes) to an owner.
	names                    map[string]uint32
	nameBytes                chunks
	liveNameLen, deadNameLen int
	owners                   []owner
	freeOwners               []uint32
	rkeys                    []rkey
	freeRkeys                []uint32
	// sets interns scope lists: keys with the same scopes share them.
	sets   []*scopeSet
	setIDs map[string]uint32
	// policies (by name) and the labels of namespaces decide which
	// restricted scopes a key may use.
	policies []kw.ApiKeyPolicy
	nsLabels map[string]map[string]string

	synced atomic.Bool
	size   atomic.Int64
	// writes counts slot writes, for tests of what republishes.
	writes atomic.Int64
}

// New returns an empty index.
func New() *Index {
	ix := &Index{seed: maphash.MakeSeed(), names: map[string]uint32{}, setIDs: map[string]uint32{},
		nsLabels: map[string]map[string]string{}}
	for i := range ix.shards {
		ix.shards[i].m = map[idKey]slot{}
		ix.shards[i].setNo = map[uint32]uint32{}
	}
	return ix
}

func (ix *Index) shardNo(k *idKey) uint8 {
	return uint8(maphash.Bytes(ix.seed, k[:]) % shardCount)
}

func (ix *Index) shard(k *idKey) *shard { return &ix.shards[ix.shardNo(k)] }

// Lookup returns the entry of a key ID.
func (ix *Index) Lookup(id string) (e Entry, found bool) {
	k, valid := keyOf(id)
	if !valid {
		return e, false
	}
	no := ix.shardNo(&k)
	s := &ix.shards[no]
	s.mu.RLock()
	if sl, ok := s.m[k]; ok {
		e = Entry{Sum: sl.sum, Archived: sl.archived, expiresAt: sl.expiresAt, revokesAt: sl.revokesAt,
			Identity: s.identity(sl.rec, no)}
		found = true
	}
	s.mu.RUnlock()
	return e, found
}

// Count records one check of a known key at now. A key that left the
// index since its lookup (removed, or taken over by another ApiKey) is not
// counted: it has no counters any more.
func (ix *Index) Count(id Identity, o Outcome, now time.Time) {
	s := &ix.shards[id.shard]
	s.mu.RLock()
	defer s.mu.RUnlock()
	if id.rec < s.nrec {
		if r := s.record(id.rec); r.serial == id.serial {
			r.usage.count(o, now) // where the lookup found it: the usual case
			return
		}
	}
	// A compaction moved the record since the lookup: find it by key ID.
	if k, valid := keyOf(id.id); valid {
		if sl, ok := s.m[k]; ok {
			if r := s.record(sl.rec); r.serial == id.serial {
				r.usage.count(o, now)
			}
		}
	}
}

// Len is the number of verifiable keys.
func (ix *Index) Len() int { return int(ix.size.Load()) }

// Synced reports whether the index has seen every object once.
func (ix *Index) Synced() bool { return ix.synced.Load() }

// MarkSynced is called once the watch has delivered its initial list.
func (ix *Index) MarkSynced() { ix.synced.Store(true) }

func fullName(nn types.NamespacedName) string { return nn.Namespace + "/" + nn.Name }

// owner returns the index of nn's owner, adding one if create.
func (ix *Index) owner(full string, create bool) (uint32, bool) {
	if oi, ok := ix.names[full]; ok {
		return oi, true
	}
	if !create {
		return 0, false
	}
	var oi uint32
	if n := len(ix.freeOwners); n > 0 {
		oi, ix.freeOwners = ix.freeOwners[n-1], ix.freeOwners[:n-1]
	} else {
		oi = uint32(len(ix.owners))
		ix.owners = append(ix.owners, owner{})
	}
	ix.owners[oi] = owner{keys: none}
	ix.names[ix.nameBytes.str(full)] = oi
	ix.liveNameLen += len(full)
	return oi, true
}

// dropOwner forgets an owner with neither ApiKey nor record.
func (ix *Index) dropOwner(full string, oi uint32) {
	delete(ix.names, full)
	ix.owners[oi] = owner{}
	ix.freeOwners = append(ix.freeOwners, oi)
	ix.liveNameLen -= len(full)
	ix.deadNameLen += len(full)
	if ix.deadNameLen > 64<<10 && ix.deadNameLen > ix.liveNameLen {
		// Copy the live names into fresh chunks: the dead ones go with
		// the old.
		names := make(map[string]uint32, len(ix.names))
		ix.nameBytes, ix.deadNameLen = chunks{}, 0
		for n, i := range ix.names {
			names[ix.nameBytes.str(n)] = i
		}
		ix.names = names
	}
}

// SetApiKey records an ApiKey; nil removes it (deleted or being deleted),
// which revokes its keys at once.
func (ix *Index) SetApiKey(nn types.NamespacedName, k *ApiKey) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	full := fullName(nn)
	oi, ok := ix.owner(full, k != nil)
	if !ok {
		return
	}
	o := &ix.owners[oi]
	if k == nil {
		if !o.hasApiKey {
			return
		}
		old := ix.publishedIDs(o)
		o.hasApiKey, o.archived, o.expiresAt, o.own, o.granted = false, false, 0, 0, 0
		ix.rebuild(full, oi, old)
		return
	}
	own := ix.intern(k.Scopes)
	expiresAt := unixNano(k.ExpiresAt)
	if o.hasApiKey && o.own == own && o.archived == k.Archived && o.expiresAt == expiresAt {
		return // a status or metadata change: nothing the check reads
	}
	old := ix.publishedIDs(o)
	o.hasApiKey, o.archived, o.expiresAt, o.own = true, k.Archived, expiresAt, own
	o.granted = ix.grant(nn.Namespace, own)
	ix.rebuild(full, oi, old)
}

// SetRecord records an ApiKeyRecord; nil removes it.
func (ix *Index) SetRecord(nn types.NamespacedName, r *Record) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	full := fullName(nn)
	oi, ok := ix.owner(full, r != nil)
	if !ok {
		return
	}
	o := &ix.owners[oi]
	old := ix.publishedIDs(o)
	ix.freeKeys(o)
	o.hasRecord, o.revoked = r != nil, false
	if r != nil {
		o.revoked = r.Revoked
		last := none
		for _, k := range r.Keys {
			sum, err := keys.ParseDigest(k.Digest)
			id, okID := keyOf(k.ID)
			if err != nil || !okID || !keys.ValidID(k.ID) {
				continue // the CRD's validation keeps these out; never verify garbage
			}
			// newKey may move ix.rkeys: link by index, not by pointer.
			ki := ix.newKey(rkey{id: id, sum: sum, revokesAt: unixNano(k.RevokesAt), next: none})
			if last == none {
				ix.owners[oi].keys = ki
			} else {
				ix.rkeys[last].next = ki
			}
			last = ki
		}
	}
	ix.rebuild(full, oi, old)
}

func (ix *Index) newKey(k rkey) uint32 {
	if n := len(ix.freeRkeys); n > 0 {
		i := ix.freeRkeys[n-1]
		ix.freeRkeys = ix.freeRkeys[:n-1]
		ix.rkeys[i] = k
		return i
	}
	ix.rkeys = append(ix.rkeys, k)
	return uint32(len(ix.rkeys) - 1)
}

func (ix *Index) freeKeys(o *owner) {
	for ki := o.keys; ki != none; {
		next := ix.rkeys[ki].next
		ix.rkeys[ki] = rkey{}
		ix.freeRkeys = append(ix.freeRkeys, ki)
		ki = next
	}
	o.keys = none
}

// Retain removes the ApiKeys (apiKeys true) or records (false) of namespace
// ("" for all) that are not in keep: a relist after a lost watch reports
// only what exists.
func (ix *Index) Retain(apiKeys bool, namespace string, keep map[types.NamespacedName]bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, full := range slices.Collect(maps.Keys(ix.names)) {
		ns, name, _ := strings.Cut(full, "/")
		if keep[types.NamespacedName{Namespace: ns, Name: name}] || namespace != "" && ns != namespace {
			continue
		}
		oi := ix.names[full]
		o := &ix.owners[oi]
		if apiKeys && o.hasApiKey {
			old := ix.publishedIDs(o)
			o.hasApiKey, o.archived, o.expiresAt, o.own, o.granted = false, false, 0, 0, 0
			ix.rebuild(full, oi, old)
		} else if !apiKeys && o.hasRecord {
			old := ix.publishedIDs(o)
			ix.freeKeys(o)
			o.hasRecord, o.revoked = false, false
			ix.rebuild(full, oi, old)
		}
	}
}

// scopeSet is one interned list of scopes.
type scopeSet struct {
	scopes []string
	header []string
}

// intern returns the number of the shared copy of a scope list. Sets no
// key uses any more stay: there are few distinct ones.
func (ix *Index) intern(scopes []string) uint32 {
	joined := strings.Join(scopes, ",")
	if i, ok := ix.setIDs[joined]; ok {
		return i
	}
	i := uint32(len(ix.sets))
	ix.sets = append(ix.sets, &scopeSet{scopes: slices.Clone(scopes), header: []string{joined}})
	ix.setIDs[joined] = i
	return i
}

// publishedIDs are the key IDs an ApiKey has slots for; call it before
// changing the state they were built from.
func (ix *Index) publishedIDs(o *owner) []idKey {
	if !o.published() {
		return nil
	}
	var ids []idKey
	for ki := o.keys; ki != none; ki = ix.rkeys[ki].next {
		ids = append(ids, ix.rkeys[ki].id)
	}
	return ids
}

// rebuild publishes the slots of one ApiKey (one per recorded key, only
// while both the ApiKey and its record exist), then removes those of old
// that it no longer has. A key that stays is replaced in one step: a
// concurrent check sees the old entry or the new one, never none.
func (ix *Index) rebuild(full string, oi uint32, old []idKey) {
	o := &ix.owners[oi]
	var now []idKey
	if o.published() {
		for ki := o.keys; ki != none; ki = ix.rkeys[ki].next {
			k := &ix.rkeys[ki]
			ix.publish(k, full, o.granted, slot{sum: k.sum, archived: o.archived || o.revoked,
				expiresAt: o.expiresAt, revokesAt: k.revokesAt})
			now = append(now, k.id)
		}
	}
	for _, id := range old {
		if !slices.Contains(now, id) {
			ix.unpublish(&id, full)
		}
	}
	if !o.hasApiKey && !o.hasRecord {
		ix.dropOwner(full, oi)
	}
}

func (ix *Index) publish(k *rkey, full string, setID uint32, fresh slot) {
	s := ix.shard(&k.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	ix.writes.Add(1)
	set := s.localSet(setID, ix.sets[setID])
	prev, dup := s.m[k.id]
	switch {
	case dup && s.bytes.view(s.record(prev.rec).name) == full:
		// The same key of the same ApiKey: its record, and so its counts,
		// stay; only its scopes may have changed.
		fresh.rec = prev.rec
		s.record(prev.rec).set = set
	default:
		if dup {
			// Another ApiKey recorded the same ID: the newer takes it over.
			s.dead++
		} else {
			ix.size.Add(1)
		}
		fresh.rec = s.newRecord(k.id, full, set)
	}
	s.m[k.id] = fresh
	s.compact()
}

func (ix *Index) unpublish(id *idKey, full string) {
	s := ix.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	sl, ok := s.m[*id]
	if !ok || s.bytes.view(s.record(sl.rec).name) != full {
		return // taken over by another ApiKey
	}
	ix.writes.Add(1)
	delete(s.m, *id)
	s.dead++
	ix.size.Add(-1)
	s.compact()
}

// Each calls fn with every key and its counters, shard by shard, under the
// shard's read lock: fn must be quick, must not keep u, and must not call
// back into the index.
func (ix *Index) Each(fn func(id Identity, u *Usage)) {
	for i := range ix.shards {
		s := &ix.shards[i]
		s.mu.RLock()
		for _, sl := range s.m {
			fn(s.identity(sl.rec, uint8(i)), &s.record(sl.rec).usage)
		}
		s.mu.RUnlock()
	}
}

// grant returns the scopes a key in namespace may use: its own, less those
// an ApiKeyPolicy restricts and does not allow there.
func (ix *Index) grant(namespace string, own uint32) uint32 {
	if len(ix.policies) == 0 {
		return own
	}
	scopes := ix.sets[own].scopes
	denied := policy.Denied(ix.policies, ix.nsLabels[namespace], scopes)
	if len(denied) == 0 {
		return own
	}
	kept := slices.DeleteFunc(slices.Clone(scopes), func(s string) bool {
		return slices.ContainsFunc(denied, func(d policy.Denial) bool { return d.Scope == s })
	})
	return ix.intern(kept)
}

// SetPolicy records an ApiKeyPolicy; nil removes it. Keys whose scopes it
// changes are republished at once.
func (ix *Index) SetPolicy(name string, p *kw.ApiKeyPolicy) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	i := slices.IndexFunc(ix.policies, func(q kw.ApiKeyPolicy) bool { return q.Name == name })
	switch {
	case p == nil && i < 0:
		return
	case p == nil:
		ix.policies = slices.Delete(ix.policies, i, i+1)
	case i < 0:
		ix.policies = append(ix.policies, *p)
	default:
		ix.policies[i] = *p
	}
	ix.regrant(func(string) bool { return true })
}

// SetNamespace records a namespace's labels; nil removes it. Only a change
// of labels, with policies in force, can change a key's scopes.
func (ix *Index) SetNamespace(name string, labels map[string]string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	old, had := ix.nsLabels[name]
	if had == (labels != nil) && maps.Equal(old, labels) {
		return
	}
	if labels == nil {
		delete(ix.nsLabels, name)
	} else {
		ix.nsLabels[name] = labels
	}
	if len(ix.policies) > 0 {
		ix.regrant(func(ns string) bool { return ns == name })
	}
}

// RetainPolicies and RetainNamespaces drop what a relist no longer has.
func (ix *Index) RetainPolicies(keep map[string]bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	n := len(ix.policies)
	ix.policies = slices.DeleteFunc(ix.policies, func(p kw.ApiKeyPolicy) bool { return !keep[p.Name] })
	if len(ix.policies) != n {
		ix.regrant(func(string) bool { return true })
	}
}

// RetainNamespaces drops the labels of namespaces a relist no longer has.
func (ix *Index) RetainNamespaces(keep map[string]bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	maps.DeleteFunc(ix.nsLabels, func(name string, _ map[string]string) bool { return !keep[name] })
	if len(ix.policies) > 0 {
		ix.regrant(func(ns string) bool { return !keep[ns] })
	}
}

// regrant recomputes the granted scopes of the ApiKeys in the namespaces
// in, and republishes those that changed.
func (ix *Index) regrant(in func(namespace string) bool) {
	for full, oi := range ix.names {
		o := &ix.owners[oi]
		ns, _, _ := strings.Cut(full, "/")
		if !o.hasApiKey || !in(ns) {
			continue
		}
		if g := ix.grant(ns, o.own); g != o.granted {
			old := ix.publishedIDs(o)
			o.granted = g
			ix.rebuild(full, oi, old)
		}
	}
}
