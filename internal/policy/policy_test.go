package policy

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kw "keyward.dev/keyward/api/v1alpha1"
)

func TestOverlap(t *testing.T) {
	for _, tc := range []struct {
		pattern, scope string
		want           string // "" for no overlap
	}{
		{"*", "*", "*"},
		{"*", "a", ""}, // the pattern '*' names only full access
		{"*", "devices:write", ""},
		{"*:write", "devices:write", "devices:write"},
		{"*:write", "devices:read", ""},
		{"*:write", "write", ""},
		{"*:write", "a:b:write", ""},
		{"devices:*", "devices:read", "devices:read"},
		{"devices:*", "agents:read", ""},
		{"*:write", "devices:*", "devices:write"}, // devices:* grants devices:write
		{"*:write", "*", "*:write"},               // full access grants every write scope
		{"billing:*", "*", "billing:*"},           // ... and every billing scope
		{"billing:*", "*:write", "billing:write"},
		{"billing:read", "billing:*", "billing:read"},
		{"*:*", "devices:*", "devices:*"},
		{"v1.x:read", "v1.x:read", "v1.x:read"},
		{"v1.x:read", "v1yx:read", ""},
	} {
		got, ok := Overlap(tc.pattern, tc.scope)
		if ok != (tc.want != "") || got != tc.want || Restricts(tc.pattern, tc.scope) != ok {
			t.Errorf("Overlap(%q, %q) = %q, %v; want %q", tc.pattern, tc.scope, got, ok, tc.want)
		}
	}
}

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		allow, part string
		want        bool
	}{
		{"*", "*", true},
		{"*", "billing:write", true}, // who may grant full access may grant anything
		{"*:write", "*", false},
		{"*:write", "devices:write", true},
		{"*:write", "*:write", true},
		{"devices:write", "*:write", false},
		{"billing:read", "billing:*", false}, // billing:* grants more than billing:read
		{"billing:*", "billing:read", true},
		{"a:*", "a:b:c", false},
	} {
		if got := Covers(tc.allow, tc.part); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tc.allow, tc.part, got, tc.want)
		}
	}
}

// The attacks on narrow policies: every way to ask for more than a
// namespace may grant is refused.
func TestWildcardsDoNotSlipPastNarrowPolicies(t *testing.T) {
	billing := kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "billing"}, Spec: kw.ApiKeyPolicySpec{
		RestrictedScopes: []kw.Scope{"billing:*"},
		Allow: []kw.PolicyRule{{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "gold"}},
			Scopes: []kw.Scope{"billing:read"}}},
	}}
	for _, tc := range []struct {
		labels map[string]string
		scope  string
		denied bool
	}{
		{nil, "billing:read", true},
		{nil, "*", true},      // full access grants billing:*
		{nil, "*:read", true}, // grants billing:read
		{nil, "*:*", true},    // grants every two-segment scope
		{nil, "devices:read", false},
		{map[string]string{"tier": "gold"}, "billing:read", false},
		{map[string]string{"tier": "gold"}, "*:read", false}, // its billing part is billing:read, allowed
		{map[string]string{"tier": "gold"}, "billing:*", true},
		{map[string]string{"tier": "gold"}, "*", true},
		{map[string]string{"tier": "gold"}, "*:write", true},
	} {
		got := len(Denied([]kw.ApiKeyPolicy{billing}, tc.labels, []string{tc.scope})) > 0
		if got != tc.denied {
			t.Errorf("labels %v, scope %q: denied %v, want %v", tc.labels, tc.scope, got, tc.denied)
		}
	}
}
