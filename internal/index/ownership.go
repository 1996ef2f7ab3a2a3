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
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// uid is an object's UID in 8 bytes: the first 8 of its SHA-256; the zero
// uid is no UID. Owners compare and order UIDs only, and the API server
// draws them at random, so 64 bits tell them apart as well as 128 would
// (a collision between two given UIDs: 2⁻⁶⁴), at half the space.
type uid [8]byte

func uidOf(s types.UID) (u uid) {
	if s == "" {
		return u
	}
	sum := sha256.Sum256([]byte(s))
	copy(u[:], sum[:])
	if u == (uid{}) {
		u[0] = 1 // never the zero uid
	}
	return u
}

// Claims need no map of their own: a key ID that one ApiKey claims is
// published for it (slot.owner), and contested lists the claimants of the
// few key IDs that more than one claims. Writers read the shards' maps
// under ix.mu alone: only writers, which hold it, change them.

// claim records that owner oi claims key ID id, and publishes the key for
// its owner.
func (ix *Index) claim(id idKey, oi uint32) {
	if list, ok := ix.contested[id]; ok {
		if !slices.Contains(list, oi) {
			ix.contested[id] = append(list, oi)
		}
	} else if w, ok := ix.publishedFor(id); ok && w != oi {
		ix.contested[id] = []uint32{w, oi}
		ix.contestedN.Store(int64(len(ix.contested)))
	}
	ix.settle(id, oi)
}

// unclaim drops owner oi's claim on id, and publishes the key for the next
// claimant or removes it.
func (ix *Index) unclaim(id idKey, oi uint32) {
	list, ok := ix.contested[id]
	if !ok {
		if w, ok := ix.publishedFor(id); ok && w == oi {
			ix.unpublish(&id)
		}
		return
	}
	list = slices.DeleteFunc(list, func(o uint32) bool { return o == oi })
	if len(list) == 1 {
		delete(ix.contested, id)
		ix.contestedN.Store(int64(len(ix.contested)))
	} else {
		ix.contested[id] = list
	}
	ix.settle(id, list[0])
}

// publishedFor is the owner a key ID is published for.
func (ix *Index) publishedFor(id idKey) (uint32, bool) {
	sl, ok := ix.shard(&id).m.get(&id)
	return sl.owner, ok
}

// before reports whether claimant a comes before claimant b.
func (ix *Index) before(a, b uint32) bool {
	oa, ob := ix.owners.at(a), ix.owners.at(b)
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
	list, ok := ix.contested[id]
	if !ok {
		return ix.publishedFor(id)
	}
	w := list[0]
	for _, c := range list[1:] {
		if ix.before(c, w) {
			w = c
		}
	}
	return w, true
}

// settle publishes the slot of key ID id for its owner: of its claimants
// when contested, else claimant, the one that claims it.
func (ix *Index) settle(id idKey, claimant uint32) {
	oi := claimant
	if _, ok := ix.contested[id]; ok {
		oi, _ = ix.ownerOf(id)
	}
	o := ix.owners.at(oi)
	for ki := o.keys; ki != none; ki = ix.rkeys.at(ki).next {
		if k := ix.rkeys.at(ki); k.id == id {
			until := earliest(o.expiresAt, k.revokesAt)
			if o.archived || o.revoked {
				until = -1
			}
			ix.publish(k, ix.nameBytes.view(o.name), o.granted, o.lim, slot{sum: k.sum, until: until, owner: oi})
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
	out := []string{ix.nameBytes.view(ix.owners.at(w).name)}
	for _, c := range ix.contested[k] {
		if c != w {
			out = append(out, ix.nameBytes.view(ix.owners.at(c).name))
		}
	}
	return out
}
