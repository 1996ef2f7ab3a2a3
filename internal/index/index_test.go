package index

import (
	"bytes"
	"fmt"
	"math/rand"
	"slices"
	"strings"
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
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	if _, ok := ix.Lookup(k.ID); ok {
		t.Fatal("a record without its ApiKey verifies")
	}
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a:read", "b:write"}})
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
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}, Revoked: true})
	if e, ok := ix.Lookup(k.ID); !ok || !e.Archived {
		t.Fatal("revoked record not archived")
	}
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Archived: true})
	if e, ok := ix.Lookup(k.ID); !ok || !e.Archived {
		t.Fatal("archived ApiKey not archived")
	}
}

func TestRotationKeepsBothKeysUntilTheGraceEnds(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	old, cur := key(t), key(t)
	end := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: cur.ID, Digest: cur.Digest()}, {ID: old.ID, Digest: old.Digest(), RevokesAt: end}}})
	if ix.Len() != 2 {
		t.Fatalf("%d entries", ix.Len())
	}
	o, _ := ix.Lookup(old.ID)
	c, _ := ix.Lookup(cur.ID)
	if o.ExpiredAt(end.Add(-time.Second)) || !o.ExpiredAt(end) || c.ExpiredAt(end.Add(time.Hour)) {
		t.Fatal("grace period not judged at request time")
	}
	// The rotation finishes: the old key leaves the record.
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: cur.ID, Digest: cur.Digest()}}})
	if _, ok := ix.Lookup(old.ID); ok || ix.Len() != 1 {
		t.Fatal("old key still there")
	}
}

func TestGarbageRecordsNeverVerify(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: "short", Digest: "sha256:00"}, {ID: "AAAAAAAAAAAAAAAA", Digest: "md5:x"}}})
	if ix.Len() != 0 {
		t.Fatal("malformed record entries were published")
	}
}

func TestRetainDropsWhatARelistNoLongerHas(t *testing.T) {
	ix := New()
	a, b := types.NamespacedName{Namespace: "x", Name: "a"}, types.NamespacedName{Namespace: "y", Name: "b"}
	ka, kb := key(t), key(t)
	for nn, k := range map[types.NamespacedName]keys.Key{a: ka, b: kb} {
		ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"s"}})
		ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	}
	ix.Retain(true, "x", map[types.NamespacedName]bool{})
	if _, ok := ix.Lookup(ka.ID); ok {
		t.Fatal("Retain for namespace x did not drop x's ApiKey")
	}
	if _, ok := ix.Lookup(kb.ID); !ok {
		t.Fatal("Retain for namespace x dropped y's ApiKey")
	}
	// x's record stays: the ApiKey coming back publishes the key again.
	ix.SetApiKey(a, &ApiKey{UID: testUID(a), Scopes: []string{"s"}})
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
		ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"x:read", "y:write"}})
		ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
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
				ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"s"}})
				ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
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
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
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
		ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a", string(rune('b' + i%2))}})
		keys := []Key{{ID: k.ID, Digest: k.Digest()}}
		if i%2 == 0 {
			keys = append(keys, Key{ID: k2.ID, Digest: k2.Digest()}) // a rotation comes and goes
		}
		ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: keys})
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
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	writes := ix.writes.Load()
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	if ix.writes.Load() != writes {
		t.Fatal("an unchanged ApiKey was republished")
	}
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}, Archived: true})
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
	ix.SetNamespace("team-a", map[string]string{"keyward.dev/write": "yes"})
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a:read", "a:write"}})
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	scopes := func() string { e, _ := ix.Lookup(k.ID); return e.ScopesHeader()[0] }
	ix.SetPolicy("writes", &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "writes"}, Spec: kw.ApiKeyPolicySpec{
		RestrictedScopes: []kw.Scope{"*:write"},
		Allow: []kw.PolicyRule{{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"keyward.dev/write": "yes"}},
			Scopes: []kw.Scope{"*:write"}}},
	}})
	if got := scopes(); got != "a:read,a:write" {
		t.Fatalf("allowed namespace: scopes %q", got)
	}
	writes := ix.writes.Load()
	ix.SetNamespace("team-a", map[string]string{"keyward.dev/write": "yes"})
	if ix.writes.Load() != writes {
		t.Fatal("unchanged labels republished the key")
	}
	ix.SetNamespace("team-a", map[string]string{})
	if got := scopes(); got != "a:read" {
		t.Fatalf("label removed: scopes %q, want the write scope gone", got)
	}
	ix.SetNamespace("team-a", map[string]string{"keyward.dev/write": "yes"})
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
		// Names of 12 to 48 bytes: in the record and in the shard's chunks.
		return types.NamespacedName{Namespace: fmt.Sprintf("team-%d", i%7),
			Name: fmt.Sprintf("key-%d", i) + strings.Repeat("-padding", i%5)}
	}
	add := func(i int) {
		ix.SetApiKey(nn(i), &ApiKey{UID: testUID(nn(i)), Scopes: []string{"a"}})
		ix.SetRecord(nn(i), &Record{Owner: testUID(nn(i)), Keys: []Key{{ID: id(i), Digest: sum.Digest()}}})
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
	if held.KeyID() != id(1) || held.Key() != nn(1).String() || held.ScopesHeader()[0] != "a" {
		t.Fatalf("a held identity changed: %s %s", held.KeyID(), held.Key())
	}
	if ix.Len() != n/100 || len(ix.names) != n/100 {
		t.Fatalf("%d keys, %d names; want %d", ix.Len(), len(ix.names), n/100)
	}
	for i := range ix.shards {
		if s := &ix.shards[i]; s.dead >= arrayChunk && s.dead >= s.m.len() {
			t.Fatalf("shard %d not compacted: %d dead, %d live records", i, s.dead, s.m.len())
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
	owners, rkeys := ix.owners.len(), ix.rkeys.len()
	for i := 1; i < 5000; i += 100 {
		add(i)
		check(i)
	}
	if ix.owners.len() != owners || ix.rkeys.len() != rkeys {
		t.Fatalf("freed space not reused: %d owners, %d keys more", ix.owners.len()-owners, ix.rkeys.len()-rkeys)
	}
}

// A key's identity names its ApiKey whatever the name's length: in the
// record up to inlineName bytes, in the shard's chunks beyond, up to a
// namespace of 63 and a name of 253.
func TestNamesOfEveryLength(t *testing.T) {
	ix := New()
	sum := key(t)
	for n := 1; n <= 253; n++ {
		for _, ns := range []string{"a", strings.Repeat("n", 63)} {
			nn := types.NamespacedName{Namespace: ns, Name: strings.Repeat("k", n)}
			id := fmt.Sprintf("%08d%08d", len(ns), n)
			ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
			ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: id, Digest: sum.Digest()}}})
			if e, ok := ix.Lookup(id); !ok || e.Key() != nn.String() {
				t.Fatalf("a name of %d bytes: %v %q", len(nn.String()), ok, e.Key())
			}
		}
	}
}

// A newcomer that records a key ID another ApiKey holds gets nothing; the
// owner keeps its key and its counts. Once the owner is gone the next
// claimant gets the ID, with fresh counters, and a check that looked the
// key up before counts toward neither.
func TestNewcomerNeverTakesOverAKeyID(t *testing.T) {
	ix := New()
	k, forged := key(t), key(t)
	a, b := types.NamespacedName{Namespace: "victim", Name: "a"}, types.NamespacedName{Namespace: "evil", Name: "b"}
	t0 := time.Now()
	ix.SetApiKey(a, &ApiKey{UID: testUID(a), Scopes: []string{"s"}})
	ix.SetRecord(a, &Record{Owner: testUID(a), UID: "rec-a", Created: t0, Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	e, _ := ix.Lookup(k.ID)
	ix.Count(e.Identity, Allowed, time.Now())
	// The attacker's record claims the victim's key ID with a secret of its choosing.
	ix.SetApiKey(b, &ApiKey{UID: testUID(b), Scopes: []string{"s"}})
	ix.SetRecord(b, &Record{Owner: testUID(b), UID: "rec-b", Created: t0.Add(time.Second), Keys: []Key{{ID: k.ID, Digest: forged.Digest()}}})
	now, ok := ix.Lookup(k.ID)
	if !ok || now.Key() != "victim/a" || !now.Sum.Matches(k.Secret) || now.Sum.Matches(forged.Secret) {
		t.Fatalf("after the attempt: owner %s", now.Key())
	}
	if ix.Contested() != 1 || fmt.Sprint(ix.Claimants(k.ID)) != "[victim/a evil/b]" || ix.Len() != 1 {
		t.Fatalf("contested %d, claimants %v, len %d", ix.Contested(), ix.Claimants(k.ID), ix.Len())
	}
	ix.Count(e.Identity, Allowed, time.Now())
	if c := countsOf(ix, k.ID)[Allowed]; c != 2 {
		t.Fatalf("the owner's counts: %d, want 2", c)
	}
	// The attacker deletes everything: nothing changes for the victim.
	ix.SetRecord(b, nil)
	ix.SetApiKey(b, nil)
	if now, _ := ix.Lookup(k.ID); now.Key() != "victim/a" || ix.Contested() != 0 {
		t.Fatalf("after the attacker left: owner %s, contested %d", now.Key(), ix.Contested())
	}
	// A second claimant inherits the ID only when the owner is gone, with
	// fresh counters; a check holding the old identity counts nowhere.
	ix.SetApiKey(b, &ApiKey{UID: testUID(b), Scopes: []string{"s"}})
	ix.SetRecord(b, &Record{Owner: testUID(b), UID: "rec-b", Created: t0.Add(time.Second), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	ix.SetApiKey(a, nil)
	ix.Count(e.Identity, Allowed, time.Now())
	if now, _ := ix.Lookup(k.ID); now.Key() != "evil/b" || countsOf(ix, k.ID)[Allowed] != 0 {
		t.Fatalf("after the owner left: owner %s, %d counts", now.Key(), countsOf(ix, k.ID)[Allowed])
	}
	if e.Key() != "victim/a" {
		t.Fatalf("a held identity changed to %s", e.Key())
	}
}

// A record is served only while the ApiKey of its name controls it: one
// planted before the ApiKey exists, one left by an earlier ApiKey of the
// same name, or one without an owner (restored, not yet adopted) is not.
func TestRecordNeedsItsApiKeysOwnership(t *testing.T) {
	ix := New()
	k := key(t)
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	ix.SetRecord(nn, &Record{Owner: "someone-else", Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	ix.SetApiKey(nn, &ApiKey{UID: testUID(nn), Scopes: []string{"s"}})
	if _, ok := ix.Lookup(k.ID); ok {
		t.Fatal("a record owned by another UID verifies")
	}
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	if _, ok := ix.Lookup(k.ID); ok {
		t.Fatal("a record without an owner verifies")
	}
	ix.SetRecord(nn, &Record{Owner: testUID(nn), Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	if _, ok := ix.Lookup(k.ID); !ok {
		t.Fatal("the adopted record does not verify")
	}
	ix.SetApiKey(nn, &ApiKey{UID: "recreated", Scopes: []string{"s"}})
	if _, ok := ix.Lookup(k.ID); ok {
		t.Fatal("a new ApiKey of the same name inherits the old one's record")
	}
}

// TestOneOwnerPerKeyIDUnderRandomEvents feeds random sequences of ApiKey
// and record adds, updates and deletes with colliding key IDs: at every
// step each key ID is served for exactly the owner the rule names (earliest
// record, then record UID), with that owner's digest; and a second index
// fed the final objects in another order agrees.
func TestOneOwnerPerKeyIDUnderRandomEvents(t *testing.T) {
	ids := []keys.Key{key(t), key(t), key(t)}
	names := []types.NamespacedName{{Namespace: "a", Name: "x"}, {Namespace: "b", Name: "x"}, {Namespace: "b", Name: "y"}, {Namespace: "c", Name: "z"}}
	// Each (ApiKey, key ID) pair has its own secret: the digest says whose
	// record a slot came from.
	secrets := map[[2]int]keys.Key{}
	for n := range names {
		for i := range ids {
			k := key(t)
			secrets[[2]int{n, i}] = k
		}
	}
	type rec struct {
		owner   types.UID
		uid     types.UID
		created time.Time
		ids     []int
	}
	t0 := time.Unix(1_700_000_000, 0)
	for seed := int64(1); seed <= 20; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		ix := New()
		apiKeys := map[int]types.UID{}
		records := map[int]*rec{}
		toRecord := func(n int, r *rec) *Record {
			out := &Record{Owner: r.owner, UID: r.uid, Created: r.created}
			for _, i := range r.ids {
				out.Keys = append(out.Keys, Key{ID: ids[i].ID, Digest: secrets[[2]int{n, i}].Digest()})
			}
			return out
		}
		expect := func(i int) (int, bool) {
			best := -1
			for n := range names {
				r, hasRec := records[n]
				u, hasKey := apiKeys[n]
				if !hasRec || !hasKey || r.owner != u || !slices.Contains(r.ids, i) {
					continue
				}
				if best < 0 {
					best = n
					continue
				}
				b := records[best]
				ru, bu := uidOf(r.uid), uidOf(b.uid)
				if r.created.Before(b.created) || r.created.Equal(b.created) && bytes.Compare(ru[:], bu[:]) < 0 {
					best = n
				}
			}
			return best, best >= 0
		}
		check := func(step int, ix *Index, what string) {
			t.Helper()
			for i, k := range ids {
				want, ok := expect(i)
				e, found := ix.Lookup(k.ID)
				if found != ok {
					t.Fatalf("seed %d step %d %s: key %d found %v, want %v", seed, step, what, i, found, ok)
				}
				if ok && (e.Key() != fullName(names[want]) || !e.Sum.Matches(secrets[[2]int{want, i}].Secret)) {
					t.Fatalf("seed %d step %d %s: key %d served for %s, want %s", seed, step, what, i, e.Key(), fullName(names[want]))
				}
			}
		}
		for step := 0; step < 400; step++ {
			n := rnd.Intn(len(names))
			nn := names[n]
			switch rnd.Intn(6) {
			case 0: // ApiKey created or updated (sometimes re-created: a new UID)
				if _, ok := apiKeys[n]; !ok || rnd.Intn(4) == 0 {
					apiKeys[n] = types.UID(fmt.Sprintf("key-%d-%d", n, step))
				}
				ix.SetApiKey(nn, &ApiKey{UID: apiKeys[n], Scopes: []string{"s"}})
			case 1:
				delete(apiKeys, n)
				ix.SetApiKey(nn, nil)
			case 2, 3: // a record written: owned by the ApiKey, or not (yet)
				r := records[n]
				if r == nil || rnd.Intn(3) == 0 {
					// Created times collide often, so UIDs break ties.
					r = &rec{uid: types.UID(fmt.Sprintf("rec-%d-%d", n, step)), created: t0.Add(time.Duration(rnd.Intn(3)) * time.Second)}
				}
				r.owner = apiKeys[n]
				if rnd.Intn(5) == 0 {
					r.owner = ""
				}
				r.ids = nil
				for i := range ids {
					if rnd.Intn(2) == 0 {
						r.ids = append(r.ids, i)
					}
				}
				records[n] = r
				ix.SetRecord(nn, toRecord(n, r))
			case 4:
				delete(records, n)
				ix.SetRecord(nn, nil)
			case 5: // a relist of records
				keep := map[types.NamespacedName]bool{}
				for m := range records {
					keep[names[m]] = true
				}
				ix.Retain(false, "", keep)
			}
			check(step, ix, "")
			contested := 0
			for i := range ids {
				c := 0
				for n := range names {
					r, hasRec := records[n]
					if u, ok := apiKeys[n]; ok && hasRec && r.owner == u && slices.Contains(r.ids, i) {
						c++
					}
				}
				if c > 1 {
					contested++
				}
			}
			if ix.Contested() != contested {
				t.Fatalf("seed %d step %d: Contested() = %d, want %d", seed, step, ix.Contested(), contested)
			}
		}
		// The same objects, delivered in another order (as a fresh
		// replica's list would), give the same owners.
		other := New()
		order := rnd.Perm(2 * len(names))
		for _, o := range order {
			n := o % len(names)
			if o < len(names) {
				if u, ok := apiKeys[n]; ok {
					other.SetApiKey(names[n], &ApiKey{UID: u, Scopes: []string{"s"}})
				}
			} else if r, ok := records[n]; ok {
				other.SetRecord(names[n], toRecord(n, r))
			}
		}
		check(-1, other, "second index")
	}
}

// testUID is the UID of the ApiKey nn and of its record's owner reference:
// the index serves a record only while the two agree.
func testUID(nn types.NamespacedName) types.UID { return types.UID("uid-" + nn.String()) }
