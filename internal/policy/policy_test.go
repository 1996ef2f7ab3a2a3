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
		Allow: []kw.PolicyRule{{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"keyward.dev/tier": "gold"}},
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
		{map[string]string{"keyward.dev/tier": "gold"}, "billing:read", false},
		{map[string]string{"keyward.dev/tier": "gold"}, "*:read", false}, // its billing part is billing:read, allowed
		{map[string]string{"keyward.dev/tier": "gold"}, "billing:*", true},
		{map[string]string{"keyward.dev/tier": "gold"}, "*", true},
		{map[string]string{"keyward.dev/tier": "gold"}, "*:write", true},
	} {
		got := len(Denied([]kw.ApiKeyPolicy{billing}, tc.labels, []string{tc.scope})) > 0
		if got != tc.denied {
			t.Errorf("labels %v, scope %q: denied %v, want %v", tc.labels, tc.scope, got, tc.denied)
		}
	}
}

// A rule may select only on labels tenants cannot set. One that selects on
// another label (admission refuses it; it could only be older than that
// rule) allows nothing, whatever its operator: a NotIn on an unguarded
// label would otherwise allow every namespace that lacks the value, which
// whoever labels namespaces decides.
func TestRulesOnUnguardedLabelsAllowNothing(t *testing.T) {
	rule := func(sel metav1.LabelSelector) kw.ApiKeyPolicy {
		return kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: kw.ApiKeyPolicySpec{
			RestrictedScopes: []kw.Scope{"billing:*"},
			Allow:            []kw.PolicyRule{{NamespaceSelector: sel, Scopes: []kw.Scope{"billing:*"}}},
		}}
	}
	in := func(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
	}
	labels := map[string]string{"tier": "gold", "keyward.dev/tier": "gold", "kubernetes.io/metadata.name": "team-a"}
	for _, tc := range []struct {
		name    string
		sel     metav1.LabelSelector
		allowed bool
	}{
		{"matchLabels on a keyward.dev/ label", metav1.LabelSelector{MatchLabels: map[string]string{"keyward.dev/tier": "gold"}}, true},
		{"the namespace's name, which its creator chooses", in("kubernetes.io/metadata.name", metav1.LabelSelectorOpIn, "team-a"), false},
		{"everything", metav1.LabelSelector{}, true},
		{"matchLabels on another label", metav1.LabelSelector{MatchLabels: map[string]string{"tier": "gold"}}, false},
		{"In on another label", in("tier", metav1.LabelSelectorOpIn, "gold"), false},
		{"NotIn on another label", in("tier", metav1.LabelSelectorOpNotIn, "bronze"), false},
		{"DoesNotExist on another label", in("sandbox", metav1.LabelSelectorOpDoesNotExist), false},
		{"a guarded and another label", metav1.LabelSelector{MatchLabels: map[string]string{"keyward.dev/tier": "gold", "tier": "gold"}}, false},
		{"a look-alike prefix", metav1.LabelSelector{MatchLabels: map[string]string{"keyward.dev.evil.com/tier": "gold"}}, false},
	} {
		denied := len(Denied([]kw.ApiKeyPolicy{rule(tc.sel)}, labels, []string{"billing:read"})) > 0
		if denied == tc.allowed {
			t.Errorf("%s: billing:read denied %v, want %v", tc.name, denied, !tc.allowed)
		}
	}
}

func TestGuardedLabels(t *testing.T) {
	if ConsentPrefix != kw.GroupVersion.Group+"/" {
		t.Errorf("ConsentPrefix %q is not keyward's API group %q", ConsentPrefix, kw.GroupVersion.Group)
	}
	all := map[string]string{"keyward.dev/write-access": "true", "keyward.dev/tier": "gold"}
	if got := GuardedLabels(all); len(got) != 2 {
		t.Errorf("guarded labels only: kept %v", got)
	}
	mixed := map[string]string{"keyward.dev/write-access": "true", "team": "a", "keyward.devx/y": "z", "kubernetes.io/metadata.name": "a"}
	got := GuardedLabels(mixed)
	if len(got) != 1 || got["keyward.dev/write-access"] != "true" {
		t.Errorf("kept %v", got)
	}
	if len(mixed) != 4 {
		t.Errorf("the namespace's own labels changed: %v", mixed)
	}
}
