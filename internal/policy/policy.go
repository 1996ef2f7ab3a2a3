// Package policy decides which of a key's scopes its namespace may grant
// under the ApiKeyPolicies: the controller reports it (ScopeNotAllowed) and
// the auth endpoint enforces it. The ValidatingAdmissionPolicy in
// config/admission says the same in CEL; the tests hold the two together.
package policy

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// Match reports whether pattern names scope: segment by segment (split on
// ':'), a '*' segment matches any one segment and anything else itself; the
// pattern '*' alone matches only the full-access scope '*', and that scope
// only it (restrict '*' to restrict full access). A '*' segment of the
// scope grants any segment, so it matches too: '*:write' matches
// 'devices:*', which grants devices:write.
func Match(pattern, scope string) bool {
	if pattern == "*" || scope == "*" {
		return pattern == scope
	}
	ps, ss := strings.Split(pattern, ":"), strings.Split(scope, ":")
	if len(ps) != len(ss) {
		return false
	}
	for i := range ps {
		if ps[i] != "*" && ss[i] != "*" && ps[i] != ss[i] {
			return false
		}
	}
	return true
}

func matchAny(patterns []kw.Scope, scope string) bool {
	for _, p := range patterns {
		if Match(string(p), scope) {
			return true
		}
	}
	return false
}

// Denial is a scope that a policy restricts and the namespace may not grant.
type Denial struct {
	Scope, Policy string
}

// Denied returns the scopes of a key in a namespace with nsLabels that some
// policy restricts and none of that policy's rules allows there. Each
// policy is judged on its own, as admission policies are.
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
			if matchAny(p.Spec.RestrictedScopes, s) && !matchAny(allowed, s) {
				out = append(out, Denial{Scope: s, Policy: p.Name})
			}
		}
	}
	return out
}

// selects reports whether a label selector chooses a namespace; a selector
// that does not parse chooses nothing (the API server validates them).
func selects(sel *metav1.LabelSelector, nsLabels map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(labels.Set(nsLabels))
}
