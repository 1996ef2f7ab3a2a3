package index

import (
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
)

func key(t *testing.T) keys.Key {
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// countsOf reads the counts of a key ID.
func countsOf(ix *Index, id string) (c [numOutcomes]uint64) {
	ix.Each(func(e Identity, u *Usage) {
		if e.KeyID() == id {
			c = u.Counts()
		}
	})
	return c
}

func TestEntryNeedsBothApiKeyAndRecord(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "team-a", Name: "reader"}
	k := key(t)
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	if _, ok := ix.Lookup(k.ID); ok {
		t.Fatal("a record without its ApiKey verifies")
	}
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a:read", "b:write"}})
	e, ok := ix.Lookup(k.ID)
	if !ok || e.Key() != "team-a/reader" || e.Namespace() != "team-a" || e.Name() != "reader" || e.KeyID() != k.ID ||
		e.ScopesHeader()[0] != "a:read,b:write" || !e.Sum.Matches(k.Secret) || ix.Len() != 1 {
		t.Fatalf("entry %+v, len %d", e, ix.Len())
	}
	ix.SetApiKey(nn, nil) // deleted: revoked at once
	if _, ok := ix.Lookup(k.ID); ok || ix.Len() != 0 {
		t.Fatal("a deleted ApiKey's key still verifies")
	}
}

func TestRevokedRecordAndArchivedApiKeyMarkEntries(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	k := key(t)
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}, Revoked: true})
	if e, ok := ix.Lookup(k.ID); !ok || !e.Archived {
		t.Fatal("revoked record not archived")
	}
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}, Archived: true})
	if e, ok := ix.Lookup(k.ID); !ok || !e.Archived {
		t.Fatal("archived ApiKey not archived")
	}
}

func TestRotationKeepsBothKeysUntilTheGraceEnds(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	old, cur := key(t), key(t)
	end := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: cur.ID, Digest: cur.Digest()}, {ID: old.ID, Digest: old.Digest(), RevokesAt: end}}})
	if ix.Len() != 2 {
		t.Fatalf("%d entries", ix.Len())
	}
	o, _ := ix.Lookup(old.ID)
	c, _ := ix.Lookup(cur.ID)
	if o.ExpiredAt(end.Add(-time.Second)) || !o.ExpiredAt(end) || c.ExpiredAt(end.Add(time.Hour)) {
		t.Fatal("grace period not judged at request time")
	}
	// The rotation finishes: the old key leaves the record.
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: cur.ID, Digest: cur.Digest()}}})
	if _, ok := ix.Lookup(old.ID); ok || ix.Len() != 1 {
		t.Fatal("old key still there")
	}
}

func TestGarbageRecordsNeverVerify(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: "short", Digest: "sha256:00"}, {ID: "AAAAAAAAAAAAAAAA", Digest: "md5:x"}}})
	if ix.Len() != 0 {
		t.Fatal("malformed record entries were published")
	}
}

func TestRetainDropsWhatARelistNoLongerHas(t *testing.T) {
	ix := New()
	a, b := types.NamespacedName{Namespace: "x", Name: "a"}, types.NamespacedName{Namespace: "y", Name: "b"}
	ka, kb := key(t), key(t)
	for nn, k := range map[types.NamespacedName]keys.Key{a: ka, b: kb} {
		ix.SetApiKey(nn, &ApiKey{Scopes: []string{"s"}})
		ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	}
	ix.Retain(true, "x", map[types.NamespacedName]bool{})
	if _, ok := ix.Lookup(ka.ID); ok {
		t.Fatal("Retain for namespace x did not drop x's ApiKey")
	}
	if _, ok := ix.Lookup(kb.ID); !ok {
		t.Fatal("Retain for namespace x dropped y's ApiKey")
	}
	// x's record stays: the ApiKey coming back publishes the key again.
	ix.SetApiKey(a, &ApiKey{Scopes: []string{"s"}})
	if _, ok := ix.Lookup(ka.ID); !ok {
		t.Fatal("record lost")
	}
}

func TestScopesAreShared(t *testing.T) {
	ix := New()
	var ids []string
	for _, n := range []string{"a", "b"} {
		k := key(t)
		nn := types.NamespacedName{Namespace: "ns", Name: n}
		ix.SetApiKey(nn, &ApiKey{Scopes: []string{"x:read", "y:write"}})
		ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
		ids = append(ids, k.ID)
	}
	e0, _ := ix.Lookup(ids[0])
	e1, _ := ix.Lookup(ids[1])
	if &e0.Scopes()[0] != &e1.Scopes()[0] {
		t.Fatal("identical scope lists are not shared")
	}
}

// TestLookupsDuringUpdates runs lookups while keys are added and removed;
// with -race it proves readers never see a half-built entry.
func TestLookupsDuringUpdates(t *testing.T) {
	ix := New()
	ks := make([]keys.Key, 200)
	for i := range ks {
		ks[i] = key(t)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, k := range ks {
					if e, ok := ix.Lookup(k.ID); ok && (!e.Sum.Matches(k.Secret) || e.KeyID() != k.ID) {
						t.Error("entry with a foreign digest or identity")
						return
					}
				}
			}
		}()
	}
	for round := range 20 {
		for i, k := range ks {
			nn := types.NamespacedName{Namespace: "ns", Name: k.ID}
			if (i+round)%2 == 0 {
				ix.SetApiKey(nn, &ApiKey{Scopes: []string{"s"}})
				ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
			} else {
				ix.SetApiKey(nn, nil)
			}
		}
	}
	close(stop)
	wg.Wait()
}

// A change to an ApiKey replaces its entries in one step: a check running
// meanwhile never finds a live key missing, and counts carry over.
func TestUpdatesNeverHideALiveKeyAndKeepCounts(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "team-a", Name: "reader"}
	k, k2 := key(t), key(t)
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	e, _ := ix.Lookup(k.ID)
	ix.Count(e.Identity, Allowed, time.Now())

	stop := make(chan struct{})
	missing := make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				missing <- n
				return
			default:
			}
			if _, ok := ix.Lookup(k.ID); !ok {
				n++
			}
		}
	}()
	for i := range 2000 {
		ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a", string(rune('b' + i%2))}})
		keys := []Key{{ID: k.ID, Digest: k.Digest()}}
		if i%2 == 0 {
			keys = append(keys, Key{ID: k2.ID, Digest: k2.Digest()}) // a rotation comes and goes
		}
		ix.SetRecord(nn, &Record{Keys: keys})
	}
	close(stop)
	if n := <-missing; n != 0 {
		t.Fatalf("a live key was missing from %d lookups during updates", n)
	}
	if a := countsOf(ix, k.ID)[Allowed]; a != 1 {
		t.Fatalf("the count was lost on republish: %d", a)
	}
	if _, ok := ix.Lookup(k2.ID); ok || ix.Len() != 1 {
		t.Fatalf("the dropped key still verifies (len %d)", ix.Len())
	}
}

// A change to an ApiKey's status or metadata (usage writes, every minute)
// does not touch the index.
func TestUnchangedApiKeyIsNotRepublished(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "team-a", Name: "reader"}
	k := key(t)
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	writes := ix.writes.Load()
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	if ix.writes.Load() != writes {
		t.Fatal("an unchanged ApiKey was republished")
	}
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}, Archived: true})
	if e, _ := ix.Lookup(k.ID); ix.writes.Load() == writes || !e.Archived {
		t.Fatal("archiving was not published")
	}
}

// An ApiKeyPolicy and a namespace's labels decide which of a key's scopes
// checks see; labels that do not change republish nothing.
func TestPoliciesAndNamespaceLabels(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "team-a", Name: "robot"}
	k := key(t)
	ix.SetNamespace("team-a", map[string]string{"write": "yes"})
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a:read", "a:write"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	scopes := func() string { e, _ := ix.Lookup(k.ID); return e.ScopesHeader()[0] }
	ix.SetPolicy("writes", &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "writes"}, Spec: kw.ApiKeyPolicySpec{
		RestrictedScopes: []kw.Scope{"*:write"},
		Allow: []kw.PolicyRule{{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"write": "yes"}},
			Scopes: []kw.Scope{"*:write"}}},
	}})
	if got := scopes(); got != "a:read,a:write" {
		t.Fatalf("allowed namespace: scopes %q", got)
	}
	writes := ix.writes.Load()
	ix.SetNamespace("team-a", map[string]string{"write": "yes"})
	if ix.writes.Load() != writes {
		t.Fatal("unchanged labels republished the key")
	}
	ix.SetNamespace("team-a", map[string]string{})
	if got := scopes(); got != "a:read" {
		t.Fatalf("label removed: scopes %q, want the write scope gone", got)
	}
	ix.SetNamespace("team-a", map[string]string{"write": "yes"})
	if got := scopes(); got != "a:read,a:write" {
		t.Fatalf("label back: scopes %q", got)
	}
	ix.SetNamespace("team-a", map[string]string{})
	ix.RetainPolicies(map[string]bool{})
	if got := scopes(); got != "a:read,a:write" {
		t.Fatalf("policy gone: scopes %q", got)
	}
}

// Removing most keys compacts records and names into fresh chunks; the
// keys that stay keep their identity and counts, an identity a check still
// holds stays intact, and freed slots and owners are used again.
func TestCompactionKeepsWhatStays(t *testing.T) {
	ix := New()
	sum := key(t)
	const n = 70000 // enough dead records in every one of the 64 shards
	id := func(i int) string { return fmt.Sprintf("%016d", i) }
	nn := func(i int) types.NamespacedName {
		return types.NamespacedName{Namespace: fmt.Sprintf("team-%d", i%7), Name: fmt.Sprintf("key-%d", i)}
	}
	add := func(i int) {
		ix.SetApiKey(nn(i), &ApiKey{Scopes: []string{"a"}})
		ix.SetRecord(nn(i), &Record{Keys: []Key{{ID: id(i), Digest: sum.Digest()}}})
	}
	for i := range n {
		add(i)
	}
	held, _ := ix.Lookup(id(1))
	stays, _ := ix.Lookup(id(0)) // looked up before its record moves
	for i := 0; i < n; i += 100 {
		e, _ := ix.Lookup(id(i))
		ix.Count(e.Identity, Allowed, time.Now())
	}
	for i := range n {
		if i%100 != 0 {
			ix.SetApiKey(nn(i), nil)
			ix.SetRecord(nn(i), nil)
		}
	}
	if held.KeyID() != id(1) || held.Key() != "team-1/key-1" || held.ScopesHeader()[0] != "a" {
		t.Fatalf("a held identity changed: %s %s", held.KeyID(), held.Key())
	}
	if ix.Len() != n/100 || len(ix.names) != n/100 {
		t.Fatalf("%d keys, %d names; want %d", ix.Len(), len(ix.names), n/100)
	}
	for i := range ix.shards {
		if s := &ix.shards[i]; s.dead >= recChunk && s.dead >= len(s.m) {
			t.Fatalf("shard %d not compacted: %d dead, %d live records", i, s.dead, len(s.m))
		}
	}
	if ix.deadNameLen > 64<<10 {
		t.Fatalf("names not compacted: %d dead bytes", ix.deadNameLen)
	}
	check := func(i int) {
		t.Helper()
		e, ok := ix.Lookup(id(i))
		if !ok || e.KeyID() != id(i) || e.Key() != nn(i).String() || !e.Sum.Matches(sum.Secret) {
			t.Fatalf("key %d after compaction: %v %+v", i, ok, e)
		}
	}
	for i := 0; i < n; i += 100 {
		check(i)
		if countsOf(ix, id(i))[Allowed] != 1 {
			t.Fatalf("key %d lost its count", i)
		}
	}
	// A check that looked a key up before the compaction moved its record
	// still counts toward it.
	ix.Count(stays.Identity, Allowed, time.Now())
	if n := countsOf(ix, id(0))[Allowed]; n != 2 {
		t.Fatalf("a count across a compaction: %d, want 2", n)
	}
	// Freed owners and recorded keys serve new keys.
	owners, rkeys := len(ix.owners), len(ix.rkeys)
	for i := 1; i < 5000; i += 100 {
		add(i)
		check(i)
	}
	if len(ix.owners) != owners || len(ix.rkeys) != rkeys {
		t.Fatalf("freed space not reused: %d owners, %d keys more", len(ix.owners)-owners, len(ix.rkeys)-rkeys)
	}
}

// A check that looked a key up before another ApiKey took its ID over
// counts toward neither: the counters it found are gone, and the new
// owner's start at zero.
func TestCountAfterTakeoverGoesNowhere(t *testing.T) {
	ix := New()
	k := key(t)
	a, b := types.NamespacedName{Namespace: "ns", Name: "a"}, types.NamespacedName{Namespace: "ns", Name: "b"}
	ix.SetApiKey(a, &ApiKey{Scopes: []string{"s"}})
	ix.SetRecord(a, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	e, _ := ix.Lookup(k.ID)
	ix.Count(e.Identity, Allowed, time.Now())
	ix.SetApiKey(b, &ApiKey{Scopes: []string{"s"}})
	ix.SetRecord(b, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	ix.Count(e.Identity, Allowed, time.Now())
	if now, _ := ix.Lookup(k.ID); now.Key() != "ns/b" || countsOf(ix, k.ID)[Allowed] != 0 {
		t.Fatalf("after the takeover: owner %s, %d counts", now.Key(), countsOf(ix, k.ID)[Allowed])
	}
	if e.Key() != "ns/a" {
		t.Fatalf("a held identity changed to %s", e.Key())
	}
}
