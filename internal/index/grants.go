package index

// Scope grants: which of an ApiKey's scopes its namespace may use under the
// ApiKeyPolicies (internal/policy decides), recomputed when a policy or a
// namespace's labels change.

import (
	"maps"
	"slices"
	"strings"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/policy"
)

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
		o := ix.owners.at(oi)
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
