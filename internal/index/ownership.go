package index

// Ownership: a key ID belongs to one ApiKey. Every ApiKey whose record
// lists a key ID, and which is published (ApiKey and record both present,
// the record controlled by that very ApiKey), claims it; of the claimants,
// the one whose record was created first (then the lower record UID, then
// the name) owns it, and only the owner's slot is published. The rule
// reads nothing but the claimants' current state, so every replica, fed
// the same objects in any order, serves the same owner; a newcomer never
// takes over a key ID that an older record holds, and when the owner goes,
// the next claimant in that order gets it.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// uid is an object's UID in 16 bytes: a UUID parsed, anything else (tests)
// hashed; the zero uid is no UID.
type uid [16]byte

func uidOf(s types.UID) (u uid) {
	if s == "" {
		return u
	}
	if h := strings.ReplaceAll(string(s), "-", ""); len(h) == 32 {
		if _, err := hex.Decode(u[:], []byte(h)); err == nil && u != (uid{}) {
			return u
		}
	}
	sum := sha256.Sum256([]byte(s))
	copy(u[:], sum[:])
	return u
}

// claim records that owner oi claims key ID id.
func (ix *Index) claim(id idKey, oi uint32) {
	first, ok := ix.claims[id]
	switch {
	case !ok:
		ix.claims[id] = oi
	case ix.contested[id] != nil:
		if !slices.Contains(ix.contested[id], oi) {
			ix.contested[id] = append(ix.contested[id], oi)
		}
	case first != oi:
		ix.contested[id] = []uint32{first, oi}
		ix.contestedN.Store(int64(len(ix.contested)))
	}
}

// unclaim drops owner oi's claim on id.
func (ix *Index) unclaim(id idKey, oi uint32) {
	if list, ok := ix.contested[id]; ok {
		list = slices.DeleteFunc(list, func(o uint32) bool { return o == oi })
		if len(list) == 1 {
			delete(ix.contested, id)
			ix.contestedN.Store(int64(len(ix.contested)))
		} else {
			ix.contested[id] = list
		}
		ix.claims[id] = list[0]
		return
	}
	if first, ok := ix.claims[id]; ok && first == oi {
		delete(ix.claims, id)
	}
}

// before reports whether claimant a comes before claimant b.
func (ix *Index) before(a, b uint32) bool {
	oa, ob := &ix.owners[a], &ix.owners[b]
	return claimBefore(oa.recordCreated, oa.recordUID, ix.nameBytes.view(oa.name),
		ob.recordCreated, ob.recordUID, ix.nameBytes.view(ob.name))
}

// claimBefore is the ownership order: the record created first, then the
// lower record UID, then the name.
func claimBefore(aCreated int64, aUID uid, aName string, bCreated int64, bUID uid, bName string) bool {
	if aCreated != bCreated {
		return aCreated < bCreated
	}
	if c := bytes.Compare(aUID[:], bUID[:]); c != 0 {
		return c < 0
	}
	return aName < bName
}

// RecordBefore reports whether record a comes before record b in the
// ownership order every replica applies; the controller uses it to tell
// which of two ApiKeys claiming a key ID keeps it.
func RecordBefore(a, b metav1.Object) bool {
	return claimBefore(unixNano(a.GetCreationTimestamp().Time), uidOf(a.GetUID()), a.GetNamespace()+"/"+a.GetName(),
		unixNano(b.GetCreationTimestamp().Time), uidOf(b.GetUID()), b.GetNamespace()+"/"+b.GetName())
}

// ownerOf returns the owner of key ID id among its claimants.
func (ix *Index) ownerOf(id idKey) (uint32, bool) {
	first, ok := ix.claims[id]
	if !ok {
		return 0, false
	}
	w := first
	for _, c := range ix.contested[id] {
		if ix.before(c, w) {
			w = c
		}
	}
	return w, true
}

// settle publishes the slot of key ID id for its owner, or removes it when
// no one claims it.
func (ix *Index) settle(id idKey) {
	oi, ok := ix.ownerOf(id)
	if !ok {
		ix.unpublish(&id)
		return
	}
	o := &ix.owners[oi]
	for ki := o.keys; ki != none; ki = ix.rkeys[ki].next {
		if k := &ix.rkeys[ki]; k.id == id {
			ix.publish(k, ix.nameBytes.view(o.name), o.granted, o.lim, slot{sum: k.sum, archived: o.archived || o.revoked,
				expiresAt: o.expiresAt, revokesAt: k.revokesAt})
			return
		}
	}
}

// Contested is the number of key IDs that more than one ApiKey's record
// claims (each served to its single owner only): a restore under another
// name, or an attempt to take a key over. Zero in a healthy cluster.
func (ix *Index) Contested() int { return int(ix.contestedN.Load()) }

// Claimants returns the ApiKeys ("namespace/name") that claim a key ID,
// its owner first; for tests and diagnostics.
func (ix *Index) Claimants(id string) []string {
	k, ok := keyOf(id)
	if !ok {
		return nil
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	w, ok := ix.ownerOf(k)
	if !ok {
		return nil
	}
	out := []string{ix.nameBytes.view(ix.owners[w].name)}
	for _, c := range ix.contested[k] {
		if c != w {
			out = append(out, ix.nameBytes.view(ix.owners[c].name))
		}
	}
	return out
}
