// Package index keeps, in memory, what the auth endpoint needs to check a
// key: key ID → digest, scopes, state and expiry. It is fed by a watch on
// ApiKeys and ApiKeyRecords and answers lookups without any I/O.
package index

import (
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/policy"
)

// Entry is one verifiable key. Entries are immutable once published: a
// change publishes a new Entry, so a reader never sees half an update.
// Entries are kept small and hold few pointers (the endpoint holds one per
// key, 100,000 and more, and the garbage collector visits each pointer).
type Entry struct {
	Sum keys.Sum
	// hdr holds the identity header values, so that answering a check
	// allocates nothing: the key ID, and the ApiKey's namespace/name.
	hdr [2]string
	// set are the scopes the key may use, shared by every entry with the
	// same ones.
	set *scopeSet
	// Archived: the ApiKey is archived or its record revoked.
	Archived bool
	// expiresAt (ApiKey spec.expiresAt) and revokesAt (end of a rotation's
	// grace period), Unix nanoseconds, 0 for never.
	expiresAt, revokesAt int64
	// Usage counts this key's decisions (never nil); it outlives
	// republished entries of the same key, so a change to the ApiKey loses
	// no count.
	Usage *Usage
}

// entryWithUsage puts a key's first entry and its counters in one
// allocation: one object fewer per key for the garbage collector.
type entryWithUsage struct {
	e Entry
	u Usage
}

// IDHeader is the key ID as a header value.
func (e *Entry) IDHeader() []string { return e.hdr[0:1:1] }

// KeyHeader is the ApiKey's namespace/name as a header value.
func (e *Entry) KeyHeader() []string { return e.hdr[1:2:2] }

// KeyID is the key's public ID.
func (e *Entry) KeyID() string { return e.hdr[0] }

// Key is the ApiKey's namespace/name.
func (e *Entry) Key() string { return e.hdr[1] }

// Scopes are the scopes the key may use.
func (e *Entry) Scopes() []string { return e.set.scopes }

// ScopesHeader is the scopes joined by ",", as a header value.
func (e *Entry) ScopesHeader() []string { return e.set.header }

// ExpiredAt reports whether the key no longer works at now: expiry and the
// end of a grace period are judged at request time, so a late controller
// cannot extend a key.
func (e *Entry) ExpiredAt(now time.Time) bool {
	n := now.UnixNano()
	return e.expiresAt != 0 && n >= e.expiresAt || e.revokesAt != 0 && n >= e.revokesAt
}

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

func (a *ApiKey) equal(b *ApiKey) bool {
	return a.Archived == b.Archived && a.ExpiresAt.Equal(b.ExpiresAt) && slices.Equal(a.Scopes, b.Scopes)
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

// recordedKey is a Key with its digest parsed: 32 bytes, not 71 characters.
type recordedKey struct {
	id        string
	sum       keys.Sum
	revokesAt int64 // Unix nanoseconds, 0 for never
}

// state is all the index holds for one ApiKey.
type state struct {
	apiKey    ApiKey
	hasApiKey bool
	// own are apiKey's scopes, interned; granted are those its namespace
	// may grant under the ApiKeyPolicies: what checks see and the scopes
	// header says (own itself when nothing is restricted).
	own, granted *scopeSet
	hasRecord    bool
	revoked      bool
	// keys are the recorded keys; while both the ApiKey and the record
	// exist, each has an entry in the shards.
	keys []recordedKey
}

func (st *state) published() bool { return st.hasApiKey && st.hasRecord }

const shardCount = 64

type shard struct {
	mu sync.RWMutex
	// m is keyed by the key ID's 16 bytes, kept in the map itself: a lookup
	// follows no pointer to compare keys.
	m map[idKey]*Entry
}

type idKey [keys.KeyIDLen]byte

func keyOf(id string) (k idKey, ok bool) {
	if len(id) != len(k) {
		return k, false
	}
	copy(k[:], id)
	return k, true
}

// Index maps key IDs to entries. Lookups take one shard's read lock and do
// no allocation; updates rebuild the entries of one ApiKey.
type Index struct {
	seed   maphash.Seed
	shards [shardCount]shard

	mu     sync.Mutex // serialises writers; guards states and scopeSets
	states map[types.NamespacedName]*state
	// scopeSets interns scope lists: keys with the same scopes share them.
	scopeSets map[string]*scopeSet
	// policies (by name) and the labels of namespaces decide which
	// restricted scopes a key may use.
	policies []kw.ApiKeyPolicy
	nsLabels map[string]map[string]string

	synced atomic.Bool
	size   atomic.Int64
}

// New returns an empty index.
func New() *Index {
	ix := &Index{seed: maphash.MakeSeed(), states: map[types.NamespacedName]*state{}, scopeSets: map[string]*scopeSet{},
		nsLabels: map[string]map[string]string{}}
	for i := range ix.shards {
		ix.shards[i].m = map[idKey]*Entry{}
	}
	return ix
}

func (ix *Index) shard(id string) *shard {
	return &ix.shards[maphash.String(ix.seed, id)%shardCount]
}

// Lookup returns the entry of a key ID, or nil.
func (ix *Index) Lookup(id string) *Entry {
	k, ok := keyOf(id)
	if !ok {
		return nil
	}
	s := ix.shard(id)
	s.mu.RLock()
	e := s.m[k]
	s.mu.RUnlock()
	return e
}

// Len is the number of verifiable keys.
func (ix *Index) Len() int { return int(ix.size.Load()) }

// Synced reports whether the index has seen every object once.
func (ix *Index) Synced() bool { return ix.synced.Load() }

// MarkSynced is called once the watch has delivered its initial list.
func (ix *Index) MarkSynced() { ix.synced.Store(true) }

// SetApiKey records an ApiKey; nil removes it (deleted or being deleted),
// which revokes its keys at once.
func (ix *Index) SetApiKey(nn types.NamespacedName, k *ApiKey) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	st := ix.state(nn)
	if k != nil && st.hasApiKey && st.apiKey.equal(k) {
		return // a status or metadata change: nothing the check reads
	}
	old := ix.publishedIDs(st)
	st.hasApiKey, st.apiKey, st.own, st.granted = k != nil, ApiKey{}, nil, nil
	if k != nil {
		st.apiKey = *k
		st.own = ix.intern(k.Scopes)
		st.apiKey.Scopes = st.own.scopes
		st.granted = ix.grant(nn.Namespace, st.own)
	}
	ix.rebuild(nn, st, old)
}

// SetRecord records an ApiKeyRecord; nil removes it.
func (ix *Index) SetRecord(nn types.NamespacedName, r *Record) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	st := ix.state(nn)
	old := ix.publishedIDs(st)
	st.hasRecord, st.revoked, st.keys = r != nil, false, nil
	if r != nil {
		st.revoked = r.Revoked
		st.keys = make([]recordedKey, 0, len(r.Keys))
		for _, k := range r.Keys {
			sum, err := keys.ParseDigest(k.Digest)
			if err != nil || !keys.ValidID(k.ID) {
				continue // the CRD's validation keeps these out; never verify garbage
			}
			st.keys = append(st.keys, recordedKey{id: k.ID, sum: sum, revokesAt: unixNano(k.RevokesAt)})
		}
	}
	ix.rebuild(nn, st, old)
}

// Retain removes the ApiKeys (apiKeys true) or records (false) of namespace
// ("" for all) that are not in keep: a relist after a lost watch reports
// only what exists.
func (ix *Index) Retain(apiKeys bool, namespace string, keep map[types.NamespacedName]bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for nn, st := range ix.states {
		if keep[nn] || namespace != "" && nn.Namespace != namespace {
			continue
		}
		if apiKeys && st.hasApiKey {
			old := ix.publishedIDs(st)
			st.hasApiKey, st.apiKey, st.own, st.granted = false, ApiKey{}, nil, nil
			ix.rebuild(nn, st, old)
		} else if !apiKeys && st.hasRecord {
			old := ix.publishedIDs(st)
			st.hasRecord, st.revoked, st.keys = false, false, nil
			ix.rebuild(nn, st, old)
		}
	}
}

// scopeSet is one interned list of scopes.
type scopeSet struct {
	scopes []string
	header []string
}

// intern returns the shared copy of a scope list. Sets no key uses any more
// stay: there are few distinct ones.
func (ix *Index) intern(scopes []string) *scopeSet {
	joined := strings.Join(scopes, ",")
	if set, ok := ix.scopeSets[joined]; ok {
		return set
	}
	set := &scopeSet{scopes: slices.Clone(scopes), header: []string{joined}}
	ix.scopeSets[joined] = set
	return set
}

func (ix *Index) state(nn types.NamespacedName) *state {
	st := ix.states[nn]
	if st == nil {
		st = &state{}
		ix.states[nn] = st
	}
	return st
}

// publishedIDs are the key IDs an ApiKey has entries for; call it before
// changing the state they were built from.
func (ix *Index) publishedIDs(st *state) []string {
	if !st.published() {
		return nil
	}
	ids := make([]string, len(st.keys))
	for i, k := range st.keys {
		ids[i] = k.id
	}
	return ids
}

// rebuild publishes the entries of one ApiKey (one per recorded key, only
// while both the ApiKey and its record exist), then removes those of old
// that it no longer has. A key that stays is replaced in one step: a
// concurrent check sees the old entry or the new one, never none.
func (ix *Index) rebuild(nn types.NamespacedName, st *state, old []string) {
	full := nn.Namespace + "/" + nn.Name
	var now []string
	if st.published() {
		ak := &st.apiKey
		for _, k := range st.keys {
			fresh := Entry{
				Sum: k.sum, hdr: [2]string{k.id, full}, set: st.granted,
				Archived:  ak.Archived || st.revoked,
				expiresAt: unixNano(ak.ExpiresAt), revokesAt: k.revokesAt,
			}
			mk, _ := keyOf(k.id) // recorded IDs are checked valid
			s := ix.shard(k.id)
			s.mu.Lock()
			prev, dup := s.m[mk]
			var e *Entry
			if dup && prev.Key() == full {
				e = &fresh
				e.Usage = prev.Usage
			} else {
				a := &entryWithUsage{e: fresh}
				e = &a.e
				e.Usage = &a.u
			}
			if !dup {
				ix.size.Add(1)
			}
			s.m[mk] = e
			s.mu.Unlock()
			now = append(now, k.id)
		}
	}
	for _, id := range old {
		if slices.Contains(now, id) {
			continue
		}
		mk, _ := keyOf(id)
		s := ix.shard(id)
		s.mu.Lock()
		if e, ok := s.m[mk]; ok && e.Key() == full {
			delete(s.m, mk)
			ix.size.Add(-1)
		}
		s.mu.Unlock()
	}
	if !st.hasApiKey && !st.hasRecord {
		delete(ix.states, nn)
	}
}

// Each calls fn with every entry, shard by shard, under the shard's read
// lock: fn must be quick and must not call back into the index.
func (ix *Index) Each(fn func(*Entry)) {
	for i := range ix.shards {
		s := &ix.shards[i]
		s.mu.RLock()
		for _, e := range s.m {
			fn(e)
		}
		s.mu.RUnlock()
	}
}

// Namespace and Name are the ApiKey's.
func (e *Entry) Namespace() string { ns, _, _ := strings.Cut(e.Key(), "/"); return ns }

// Name is the ApiKey's name.
func (e *Entry) Name() string { _, n, _ := strings.Cut(e.Key(), "/"); return n }

// grant returns the scopes a key in namespace may use: its own, less those
// an ApiKeyPolicy restricts and does not allow there.
func (ix *Index) grant(namespace string, own *scopeSet) *scopeSet {
	if len(ix.policies) == 0 {
		return own
	}
	denied := policy.Denied(ix.policies, ix.nsLabels[namespace], own.scopes)
	if len(denied) == 0 {
		return own
	}
	kept := slices.DeleteFunc(slices.Clone(own.scopes), func(s string) bool {
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
	for nn, st := range ix.states {
		if !st.hasApiKey || !in(nn.Namespace) {
			continue
		}
		if g := ix.grant(nn.Namespace, st.own); g != st.granted {
			old := ix.publishedIDs(st)
			st.granted = g
			ix.rebuild(nn, st, old)
		}
	}
}
