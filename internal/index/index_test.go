package index

import (
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

func TestEntryNeedsBothApiKeyAndRecord(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "team-a", Name: "reader"}
	k := key(t)
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	if ix.Lookup(k.ID) != nil {
		t.Fatal("a record without its ApiKey verifies")
	}
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a:read", "b:write"}})
	e := ix.Lookup(k.ID)
	if e == nil || e.Key() != "team-a/reader" || e.ScopesHeader()[0] != "a:read,b:write" || !e.Sum.Matches(k.Secret) || ix.Len() != 1 {
		t.Fatalf("entry %+v, len %d", e, ix.Len())
	}
	ix.SetApiKey(nn, nil) // deleted: revoked at once
	if ix.Lookup(k.ID) != nil || ix.Len() != 0 {
		t.Fatal("a deleted ApiKey's key still verifies")
	}
}

func TestRevokedRecordAndArchivedApiKeyMarkEntries(t *testing.T) {
	ix := New()
	nn := types.NamespacedName{Namespace: "ns", Name: "k"}
	k := key(t)
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}, Revoked: true})
	if e := ix.Lookup(k.ID); e == nil || !e.Archived {
		t.Fatal("revoked record not archived")
	}
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: k.ID, Digest: k.Digest()}}})
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}, Archived: true})
	if e := ix.Lookup(k.ID); e == nil || !e.Archived {
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
	o := ix.Lookup(old.ID)
	if o.ExpiredAt(end.Add(-time.Second)) || !o.ExpiredAt(end) || ix.Lookup(cur.ID).ExpiredAt(end.Add(time.Hour)) {
		t.Fatal("grace period not judged at request time")
	}
	// The rotation finishes: the old key leaves the record.
	ix.SetRecord(nn, &Record{Keys: []Key{{ID: cur.ID, Digest: cur.Digest()}}})
	if ix.Lookup(old.ID) != nil || ix.Len() != 1 {
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
	if ix.Lookup(ka.ID) != nil || ix.Lookup(kb.ID) == nil {
		t.Fatal("Retain for namespace x did not drop only x's ApiKey")
	}
	if s1, s2 := ix.Lookup(kb.ID).Scopes(), ix.states[a]; s2 == nil || &s1[0] == nil {
		t.Fatal("state lost")
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
	if &ix.Lookup(ids[0]).Scopes()[0] != &ix.Lookup(ids[1]).Scopes()[0] {
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
					if e := ix.Lookup(k.ID); e != nil && !e.Sum.Matches(k.Secret) {
						t.Error("entry with a foreign digest")
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
	ix.Lookup(k.ID).Usage.Count(Allowed, time.Now())

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
			if ix.Lookup(k.ID) == nil {
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
	if a, _ := ix.Lookup(k.ID).Usage.Totals(); a != 1 {
		t.Fatalf("the count was lost on republish: %d", a)
	}
	if ix.Lookup(k2.ID) != nil || ix.Len() != 1 {
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
	e := ix.Lookup(k.ID)
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}})
	if ix.Lookup(k.ID) != e {
		t.Fatal("an unchanged ApiKey was republished")
	}
	ix.SetApiKey(nn, &ApiKey{Scopes: []string{"a"}, Archived: true})
	if ix.Lookup(k.ID) == e || !ix.Lookup(k.ID).Archived {
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
	scopes := func() string { return ix.Lookup(k.ID).ScopesHeader()[0] }
	ix.SetPolicy("writes", &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "writes"}, Spec: kw.ApiKeyPolicySpec{
		RestrictedScopes: []kw.Scope{"*:write"},
		Allow: []kw.PolicyRule{{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"write": "yes"}},
			Scopes: []kw.Scope{"*:write"}}},
	}})
	if got := scopes(); got != "a:read,a:write" {
		t.Fatalf("allowed namespace: scopes %q", got)
	}
	e := ix.Lookup(k.ID)
	ix.SetNamespace("team-a", map[string]string{"write": "yes"})
	if ix.Lookup(k.ID) != e {
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
