// Package policy decides which of a key's scopes its namespace may grant
// under the ApiKeyPolicies: the controller reports it (ScopeNotAllowed) and
// the auth endpoint enforces it. The ValidatingAdmissionPolicy in
// config/admission says the same in CEL; a differential test against the
// real API server holds the two together.
//
// Scopes and patterns are segments split on ':'. A '*' segment stands for
// any one segment; '*' alone is full access, which grants every scope.
// What a restricted pattern names and what a requested scope grants are
// both sets of scopes: a scope is restricted by a pattern when the two sets
// overlap, and the overlap is what an allow rule has to cover. So '*' is
// restricted by every pattern, 'devices:*' by '*:write' (it grants
// devices:write), '*:write' by 'billing:*' (it grants billing:write).
package policy

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// Overlap returns what restricted pattern p names of what scope s grants,
// as a pattern, and whether there is anything. The pattern '*' names only
// full access: restricting '*' restricts the scope '*', not every scope.
func Overlap(p, s string) (string, bool) {
	switch {
	case s == "*":
		return p, true // full access grants whatever p names
	case p == "*":
		return "", false
	}
	ps, ss := strings.Split(p, ":"), strings.Split(s, ":")
	if len(ps) != len(ss) {
		return "", false
	}
	out := make([]string, len(ss))
	for i := range ss {
		switch {
		case ss[i] == "*":
			out[i] = ps[i]
		case ps[i] == "*" || ps[i] == ss[i]:
			out[i] = ss[i]
		default:
			return "", false
		}
	}
	return strings.Join(out, ":"), true
}

// Restricts reports whether restricted pattern p restricts scope s.
func Restricts(p, s string) bool {
	_, ok := Overlap(p, s)
	return ok
}

// Covers reports whether allow pattern a names everything pattern o names:
// '*' (full access) covers everything; otherwise segment by segment, a '*'
// segment of a covers any segment of o, a literal only itself.
func Covers(a, o string) bool {
	if a == "*" {
		return true
	}
	if o == "*" {
		return false
	}
	as, os := strings.Split(a, ":"), strings.Split(o, ":")
	if len(as) != len(os) {
		return false
	}
	for i := range as {
		if as[i] != "*" && as[i] != os[i] {
			return false
		}
	}
	return true
}

// Denial is a scope that a policy restricts and the namespace may not grant.
type Denial struct {
	Scope, Policy string
}

// Denied returns the scopes of a key in a namespace with nsLabels that some
// policy restricts where none of that policy's rules for the namespace
// covers the restricted part. Each policy is judged on its own, as
// admission policies are.
func Denied(policies []kw.ApiKeyPolicy, nsLabels map[string]string, scopes []string) []Denial {
	var out []Denial
	for i := range policies {
		p := &policies[i]
		var allowed []kw.Scope
		for _, r := range p.Spec.Allow {
			if selects(&r.NamespaceSelector, nsLabels) {
				allowed = append(allowed, r.Scopes...)
			}
		}
		for _, s := range scopes {
			if deniedBy(p.Spec.RestrictedScopes, allowed, s) {
				out = append(out, Denial{Scope: s, Policy: p.Name})
			}
		}
	}
	return out
}

// deniedBy reports whether some part of what s grants is restricted and
// not covered by an allowed pattern.
func deniedBy(restricted, allowed []kw.Scope, s string) bool {
	for _, p := range restricted {
		o, ok := Overlap(string(p), s)
		if !ok {
			continue
		}
		covered := false
		for _, a := range allowed {
			if Covers(string(a), o) {
				covered = true
				break
			}
		}
		if !covered {
			return true
		}
	}
	return false
}

// selects reports whether a label selector chooses a namespace; a selector
// that does not parse chooses nothing (the API server validates them), nor
// does one on a label that is not Guarded (admission refuses those; one
// written before that rule allows nothing, here as at admission).
func selects(sel *metav1.LabelSelector, nsLabels map[string]string) bool {
	for k := range sel.MatchLabels {
		if !Guarded(k) {
			return false
		}
	}
	for _, e := range sel.MatchExpressions {
		if !Guarded(e.Key) {
			return false
		}
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(labels.Set(nsLabels))
}

// ConsentPrefix begins the namespace labels that grant restricted scopes:
// keyward's own, keyward.dev/. Setting, changing or removing one needs the
// right to update ApiKeyPolicies (the keyward-namespace-consent admission
// policy).
const ConsentPrefix = "keyward.dev/"

// Guarded reports whether an ApiKeyPolicy may select namespaces by label
// key: only by a keyward.dev/ label, which only those who may update
// ApiKeyPolicies may set. Any other label can be set by whoever may create
// or label namespaces (self-service namespaces): a policy selecting on it
// would let them grant their keys restricted scopes. That includes
// kubernetes.io/metadata.name: the API server sets it to the name, but
// the namespace's creator chooses the name, so a policy naming a namespace
// that does not exist yet (or no longer) would grant to whoever creates
// it. The auth endpoint and the controller keep only these labels of
// namespaces, so that what namespaces hold does not grow their memory.
func Guarded(key string) bool {
	return strings.HasPrefix(key, ConsentPrefix)
}

// GuardedLabels returns the Guarded labels of a namespace (labels itself
// when all are).
func GuardedLabels(nsLabels map[string]string) map[string]string {
	return Keep(nsLabels, Guarded)
}

// Keep returns the entries of m whose keys keep accepts: m itself when it
// accepts all of them, nil when none.
func Keep(m map[string]string, keep func(key string) bool) map[string]string {
	for k := range m {
		if !keep(k) {
			var out map[string]string
			for k, v := range m {
				if keep(k) {
					if out == nil {
						out = make(map[string]string, 4)
					}
					out[k] = v
				}
			}
			return out
		}
	}
	return m
}
