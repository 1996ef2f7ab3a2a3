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
	"math/bits"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"k8s.io/apimachinery/pkg/types"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
)

// Entry is a copy of one verifiable key, taken in one step under the
// index's lock: a reader never sees half an update.
type Entry struct {
	Sum keys.Sum
	// Archived: the ApiKey is archived or its record revoked.
	Archived bool
	// until is when the key stops working, Unix nanoseconds, 0 for never:
	// the earlier of its ApiKey's spec.expiresAt and the end of a
	// rotation's grace period.
	until int64
	Identity
}

// ExpiredAt reports whether the key no longer works at now: expiry and the
// end of a grace period are judged at request time, so a late controller
// cannot extend a key.
func (e *Entry) ExpiredAt(now time.Time) bool {
	return e.until != 0 && now.UnixNano() >= e.until
}

// earliest is the earlier of two times in Unix nanoseconds, 0 for never.
func earliest(a, b int64) int64 {
	if a == 0 || b != 0 && b < a {
		return b
	}
	return a
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
	// lim is the ApiKey's limiter (limits.go), 0 for none.
	lim   uint32
	shard uint8
}

// Limited reports whether the key has limits: its checks go through Admit.
func (id Identity) Limited() bool { return id.lim != 0 }

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
	UID       types.UID
	Scopes    []string
	Archived  bool
	ExpiresAt time.Time
	// Limits are spec.limits; Quota what the status says of the quota.
	Limits Limits
	Quota  Quota
}

// Key is what the index needs of one recorded key.
type Key struct {
	ID        string
	Digest    string
	RevokesAt time.Time
}

// Record is what the index needs of an ApiKeyRecord.
type Record struct {
	// UID and Created (creationTimestamp) order the records that claim
	// the same key ID: the first created owns it.
	UID     types.UID
	Created time.Time
	// Owner is the UID of the ApiKey of the same namespace and name that
	// controls the record, "" when none does: then the record is not
	// served.
	Owner   types.UID
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

// --- What updates read and write: owners (ApiKeys) and recorded keys. ---

// owner is all the index holds for one ApiKey, with no pointers.
type owner struct {
	hasApiKey, archived bool
	hasRecord, revoked  bool
	// lim is the ApiKey's limiter, 0 when it has no limits.
	lim       uint32
	expiresAt int64
	// own are the ApiKey's scopes, interned; granted are those its
	// namespace may grant under the ApiKeyPolicies: what checks see and
	// the scopes header says (own itself when nothing is restricted).
	own, granted uint32
	// keys is the first of the recorded keys (a list through rkey.next):
	// while the owner is published, it claims each (ownership.go).
	keys uint32
	// name is the ApiKey's "namespace/name" in the index's nameBytes.
	name span
	// apiKeyUID is the ApiKey's UID; recordOwner the UID of the ApiKey
	// that controls the record (its controller owner reference). A record
	// counts only while the two agree: a record planted before its ApiKey,
	// or left from an earlier ApiKey of the same name, is never served.
	apiKeyUID, recordOwner uid
	// recordUID and recordCreated (Unix nanoseconds) order the claimants
	// of a key ID.
	recordUID     uid
	recordCreated int64
}

func (o *owner) published() bool {
	return o.hasApiKey && o.hasRecord && o.apiKeyUID != uid{} && o.apiKeyUID == o.recordOwner
}

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
	owners                   array[owner]
	freeOwners               []uint32
	rkeys                    array[rkey]
	freeRkeys                []uint32
	// contested lists all claimants of the few key IDs more than one
	// ApiKey claims; any other key ID's one claimant is the owner its slot
	// names (ownership.go).
	contested  map[idKey][]uint32
	contestedN atomic.Int64
	// sets interns scope lists: keys with the same scopes share them.
	sets   []*scopeSet
	setIDs map[string]uint32
	// policies (by name) and the labels of namespaces decide which
	// restricted scopes a key may use.
	policies []kw.ApiKeyPolicy
	nsLabels map[string]map[string]string

	// freshness has one entry per watch (staleness.go).
	freshness []*Freshness
	stale     atomic.Bool
	pages     atomic.Int64

	// lims are the limiters of the ApiKeys with limits (limits.go), in
	// chunks that never move; nLims were handed out, freeLims are free.
	lims     atomic.Pointer[[]*limChunkT]
	nLims    uint32
	freeLims []uint32
	// peers is the number of replicas that share each key's limits;
	// replica this one's name in usage reports.
	peers   atomic.Int64
	replica string
	// limitPolicies are the RateLimit-Policy texts of the limits in use,
	// by number (policyOf); few distinct ones, never dropped.
	limitPolicies atomic.Pointer[[]string]
	policyIDs     map[string]uint32

	synced atomic.Bool
	size   atomic.Int64
	// writes counts slot writes, for tests of what republishes.
	writes atomic.Int64
}

// New returns an empty index.
func New() *Index {
	ix := &Index{seed: maphash.MakeSeed(), names: map[string]uint32{}, setIDs: map[string]uint32{},
		nsLabels: map[string]map[string]string{}, contested: map[idKey][]uint32{}}
	ix.lims.Store(&[]*limChunkT{})
	ix.limitPolicies.Store(&[]string{})
	ix.policyIDs = map[string]uint32{}
	ix.peers.Store(1)
	for i := range ix.shards {
		ix.shards[i].m = newTable()
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
	if e, found = ix.Probe(id); !found {
		e = Entry{}
	}
	return e, found
}

// Probe is Lookup for checks: it takes the same time whether the index
// holds the key ID or not. For a key ID it does not hold, it returns a
// decoy entry (the entry of another key, or an empty one) and false; the
// caller compares the secret against the decoy's digest and passes it to
// Count with found false, as it would a wrong secret's key, and uses
// nothing else of it.
func (ix *Index) Probe(id string) (e Entry, found bool) {
	k, valid := keyOf(id)
	if !valid || k == (idKey{}) {
		return e, false // a key ID's form is no secret
	}
	no := ix.shardNo(&k)
	s := &ix.shards[no]
	s.mu.RLock()
	sl, hit, vacant, spare := s.m.probe(&k)
	e.Sum, e.Archived, e.until = sl.sum, sl.until < 0, max(sl.until, 0)
	// A miss reads the record of its decoy entry, as a hit reads its own;
	// an empty decoy entry names none, and the hash chooses one among all
	// of the shard's. A shard without a single record holds no key a
	// probe could find either.
	if n := uint32(s.recs.len()); n > 0 {
		decoy, _ := bits.Mul32(spare, n)
		e.Identity = s.identity(sl.rec^(sl.rec^decoy)&-uint32(vacant), no)
	}
	s.mu.RUnlock()
	return e, hit == 1
}

// Footprint names the memory of the index a probe of key ID id reads,
// beyond the key ID itself: its shard, its table's two buckets (in
// ascending order) and the entry the probe ends on, its own or, for a key
// ID the index does not hold, its decoy. The timing tests use it to
// compare known and unknown key IDs over the same memory
// (internal/authn/timing_test.go); checks do not.
type Footprint struct {
	Shard   uint8
	Buckets [2]uint64
	Entry   uint64
}

// Footprint returns the footprint of a probe of key ID id, false for a
// key ID no probe looks up.
func (ix *Index) Footprint(id string) (Footprint, bool) {
	k, valid := keyOf(id)
	if !valid || k == (idKey{}) {
		return Footprint{}, false
	}
	no := ix.shardNo(&k)
	s := &ix.shards[no]
	s.mu.RLock()
	defer s.mu.RUnlock()
	b1, b2, entry := s.m.footprint(&k)
	return Footprint{Shard: no, Buckets: [2]uint64{min(b1, b2), max(b1, b2)}, Entry: entry}, true
}

// Count records one check of a known key at now. A key that left the
// index since its lookup (removed, or taken over by another ApiKey) is not
// counted: it has no counters any more.
func (ix *Index) Count(id Identity, o Outcome, now time.Time) { ix.count(id, o, now, 1) }

// CountProbed is Count after Probe: it counts the check when the key was
// found, and does the same work without counting anything when it was not.
func (ix *Index) CountProbed(id Identity, found bool, o Outcome, now time.Time) {
	var n uint64
	if found {
		n = 1
	}
	ix.count(id, o, now, n)
}

func (ix *Index) count(id Identity, o Outcome, now time.Time, n uint64) {
	if id.set == nil {
		return // the empty decoy of a shard without records
	}
	s := &ix.shards[id.shard]
	s.mu.RLock()
	defer s.mu.RUnlock()
	if int(id.rec) < s.recs.len() {
		if r := s.record(id.rec); r.serial == id.serial {
			r.usage.count(o, now, n) // where the lookup found it: the usual case
			return
		}
	}
	// A compaction moved the record since the lookup: find it by key ID.
	if k, valid := keyOf(id.id); valid {
		if sl, ok := s.m.get(&k); ok {
			if r := s.record(sl.rec); r.serial == id.serial {
				r.usage.count(o, now, n)
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
		oi = ix.owners.add()
	}
	sp := ix.nameBytes.put(full)
	*ix.owners.at(oi) = owner{keys: none, name: sp}
	ix.names[ix.nameBytes.view(sp)] = oi
	ix.liveNameLen += len(full)
	return oi, true
}

// dropOwner forgets an owner with neither ApiKey nor record.
func (ix *Index) dropOwner(full string, oi uint32) {
	delete(ix.names, full)
	*ix.owners.at(oi) = owner{}
	ix.freeOwners = append(ix.freeOwners, oi)
	ix.liveNameLen -= len(full)
	ix.deadNameLen += len(full)
	if ix.deadNameLen > 64<<10 && ix.deadNameLen > ix.liveNameLen {
		// Copy the live names into fresh chunks: the dead ones go with
		// the old.
		names := make(map[string]uint32, len(ix.names))
		ix.nameBytes, ix.deadNameLen = chunks{}, 0
		for n, i := range ix.names {
			sp := ix.nameBytes.put(n)
			names[ix.nameBytes.view(sp)] = i
			ix.owners.at(i).name = sp
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
	o := ix.owners.at(oi)
	if k == nil {
		if !o.hasApiKey {
			return
		}
		old := ix.publishedIDs(o)
		o.hasApiKey, o.archived, o.expiresAt, o.own, o.granted, o.apiKeyUID = false, false, 0, 0, 0, uid{}
		ix.applyLimits(oi, Limits{}, Quota{})
		ix.rebuild(full, oi, old)
		return
	}
	own := ix.intern(k.Scopes)
	expiresAt := unixNano(k.ExpiresAt)
	u := uidOf(k.UID)
	if o.hasApiKey && o.own == own && o.archived == k.Archived && o.expiresAt == expiresAt && o.apiKeyUID == u {
		// A status or metadata change: nothing the check reads but the
		// limits and quota, which change in place (the slots name the
		// limiter only, so they are republished only when it comes or
		// goes).
		if ix.applyLimits(oi, k.Limits, k.Quota) {
			ix.rebuild(full, oi, ix.publishedIDs(o))
		}
		return
	}
	old := ix.publishedIDs(o)
	o.hasApiKey, o.archived, o.expiresAt, o.own, o.apiKeyUID = true, k.Archived, expiresAt, own, u
	o.granted = ix.grant(nn.Namespace, own)
	ix.applyLimits(oi, k.Limits, k.Quota)
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
	o := ix.owners.at(oi)
	old := ix.publishedIDs(o)
	ix.freeKeys(o)
	o.hasRecord, o.revoked, o.recordOwner, o.recordUID, o.recordCreated = r != nil, false, uid{}, uid{}, 0
	if r != nil {
		o.revoked, o.recordOwner, o.recordUID, o.recordCreated = r.Revoked, uidOf(r.Owner), uidOf(r.UID), unixNano(r.Created)
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
				ix.owners.at(oi).keys = ki
			} else {
				ix.rkeys.at(last).next = ki
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
		*ix.rkeys.at(i) = k
		return i
	}
	i := ix.rkeys.add()
	*ix.rkeys.at(i) = k
	return i
}

func (ix *Index) freeKeys(o *owner) {
	for ki := o.keys; ki != none; {
		next := ix.rkeys.at(ki).next
		*ix.rkeys.at(ki) = rkey{}
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
		o := ix.owners.at(oi)
		if apiKeys && o.hasApiKey {
			old := ix.publishedIDs(o)
			o.hasApiKey, o.archived, o.expiresAt, o.own, o.granted, o.apiKeyUID = false, false, 0, 0, 0, uid{}
			ix.applyLimits(oi, Limits{}, Quota{})
			ix.rebuild(full, oi, old)
		} else if !apiKeys && o.hasRecord {
			old := ix.publishedIDs(o)
			ix.freeKeys(o)
			o.hasRecord, o.revoked, o.recordOwner, o.recordUID, o.recordCreated = false, false, uid{}, uid{}, 0
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
	for ki := o.keys; ki != none; ki = ix.rkeys.at(ki).next {
		ids = append(ids, ix.rkeys.at(ki).id)
	}
	return ids
}

// rebuild brings the claims of one ApiKey up to date (one per recorded
// key while it is published) and settles every key ID whose claimants
// changed: old are the IDs it claimed before. A key that stays is
// republished in one step: a concurrent check sees the old entry or the
// new one, never none.
func (ix *Index) rebuild(full string, oi uint32, old []idKey) {
	o := ix.owners.at(oi)
	var now []idKey
	if o.published() {
		for ki := o.keys; ki != none; ki = ix.rkeys.at(ki).next {
			now = append(now, ix.rkeys.at(ki).id)
		}
	}
	for _, id := range old {
		if !slices.Contains(now, id) {
			ix.unclaim(id, oi)
		}
	}
	for _, id := range now {
		ix.claim(id, oi)
	}
	if !o.hasApiKey && !o.hasRecord {
		ix.dropOwner(full, oi)
	}
}

// EachChanged calls fn, as Each does, with every key counted since the
// last call of EachChanged took it (taking it now), with every key whose ID
// is in also, and, if all, with every key; changed says which of them was
// counted since. A key counted while EachChanged runs is taken by this call
// or left for the next: never lost.
func (ix *Index) EachChanged(all bool, also map[string]bool, fn func(id Identity, u *Usage, changed bool)) {
	for i := range ix.shards {
		s := &ix.shards[i]
		s.mu.RLock()
		s.m.each(func(k *idKey, sl *slot) {
			r := s.record(sl.rec)
			changed := r.usage.takeChanged()
			if changed || all || len(also) > 0 && also[k.String()] {
				fn(s.identity(sl.rec, uint8(i)), &r.usage, changed)
			}
		})
		s.mu.RUnlock()
	}
}

// Each calls fn with every key and its counters, shard by shard, under the
// shard's read lock: fn must be quick, must not keep u, and must not call
// back into the index.
func (ix *Index) Each(fn func(id Identity, u *Usage)) {
	for i := range ix.shards {
		s := &ix.shards[i]
		s.mu.RLock()
		s.m.each(func(_ *idKey, sl *slot) {
			fn(s.identity(sl.rec, uint8(i)), &s.record(sl.rec).usage)
		})
		s.mu.RUnlock()
	}
}
