// Package index keeps, in memory, what the auth endpoint needs to check a
// key: key ID → digest, scopes, state and expiry. It is fed by a watch on
// ApiKeys and ApiKeyRecords and answers lookups without any I/O.
package index

import (
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/keys"
)

// Entry is one verifiable key. Entries are immutable once published: a
// change publishes a new Entry, so a reader never sees half an update.
type Entry struct {
	KeyID string
	Sum   keys.Sum
	// Key is the ApiKey's namespace/name.
	Key             string
	Namespace, Name string
	Scopes          []string
	// IDHeader, KeyHeader and ScopesHeaderV are the identity header values
	// (key ID, namespace/name, scopes joined by ","), built once so that
	// answering a check allocates nothing.
	IDHeader, KeyHeader, ScopesHeaderV []string
	// Archived: the ApiKey is archived, being deleted, or its record revoked.
	Archived bool
	// ExpiresAt (ApiKey spec.expiresAt) and RevokesAt (end of a rotation's
	// grace period) are checked at request time; zero means never.
	ExpiresAt, RevokesAt time.Time
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

const shardCount = 64

type shard struct {
	mu sync.RWMutex
	m  map[string]*Entry
}

// Index maps key IDs to entries. Lookups take one shard's read lock and do
// no allocation; updates rebuild the entries of one ApiKey.
type Index struct {
	seed   maphash.Seed
	shards [shardCount]shard

	mu      sync.Mutex // serialises writers; guards the maps below
	apiKeys map[types.NamespacedName]ApiKey
	records map[types.NamespacedName]Record
	ids     map[types.NamespacedName][]string

	synced atomic.Bool
	size   atomic.Int64
}

// New returns an empty index.
func New() *Index {
	ix := &Index{
		seed:    maphash.MakeSeed(),
		apiKeys: map[types.NamespacedName]ApiKey{},
		records: map[types.NamespacedName]Record{},
		ids:     map[types.NamespacedName][]string{},
	}
	for i := range ix.shards {
		ix.shards[i].m = map[string]*Entry{}
	}
	return ix
}

func (ix *Index) shard(id string) *shard {
	return &ix.shards[maphash.String(ix.seed, id)%shardCount]
}

// Lookup returns the entry of a key ID, or nil.
func (ix *Index) Lookup(id string) *Entry {
	s := ix.shard(id)
	s.mu.RLock()
	e := s.m[id]
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
	if k == nil {
		delete(ix.apiKeys, nn)
	} else {
		ix.apiKeys[nn] = *k
	}
	ix.rebuild(nn)
}

// SetRecord records an ApiKeyRecord; nil removes it.
func (ix *Index) SetRecord(nn types.NamespacedName, r *Record) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if r == nil {
		delete(ix.records, nn)
	} else {
		ix.records[nn] = *r
	}
	ix.rebuild(nn)
}

// rebuild publishes the entries of one ApiKey: one per recorded key, only
// while both the ApiKey and its record exist.
func (ix *Index) rebuild(nn types.NamespacedName) {
	for _, id := range ix.ids[nn] {
		s := ix.shard(id)
		s.mu.Lock()
		if e := s.m[id]; e != nil && e.Namespace == nn.Namespace && e.Name == nn.Name {
			delete(s.m, id)
			ix.size.Add(-1)
		}
		s.mu.Unlock()
	}
	delete(ix.ids, nn)
	ak, okK := ix.apiKeys[nn]
	rec, okR := ix.records[nn]
	if !okK || !okR {
		return
	}
	ids := make([]string, 0, len(rec.Keys))
	header := strings.Join(ak.Scopes, ",")
	for _, k := range rec.Keys {
		sum, err := keys.ParseDigest(k.Digest)
		if err != nil || !keys.ValidID(k.ID) {
			continue // the CRD's validation keeps these out; never verify garbage
		}
		e := &Entry{
			KeyID: k.ID, Sum: sum,
			Key: nn.Namespace + "/" + nn.Name, Namespace: nn.Namespace, Name: nn.Name,
			Scopes: ak.Scopes, IDHeader: []string{k.ID},
			KeyHeader: []string{nn.Namespace + "/" + nn.Name}, ScopesHeaderV: []string{header},
			Archived:  ak.Archived || rec.Revoked,
			ExpiresAt: ak.ExpiresAt, RevokesAt: k.RevokesAt,
		}
		s := ix.shard(k.ID)
		s.mu.Lock()
		if _, dup := s.m[k.ID]; !dup {
			ix.size.Add(1)
		}
		s.m[k.ID] = e
		s.mu.Unlock()
		ids = append(ids, k.ID)
	}
	ix.ids[nn] = ids
}
