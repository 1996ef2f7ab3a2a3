package v1alpha1_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/policy"
	"keyward.dev/keyward/internal/testenv"
)

// The admission policy of config/admission, against the real API server.
func TestRestrictedScopesAtAdmission(t *testing.T) {
	ctx := context.Background()
	applyAdmission(t)
	if _, err := manifests.ApplyDir(ctx, cfg, testenv.Root()+"/config/policy"); err != nil {
		t.Fatal(err)
	}
	// A second policy: billing scopes only where keyward.dev/billing=enabled, or in
	// namespaces whose tier is gold or platinum.
	billing := &kw.ApiKeyPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "billing"},
		Spec: kw.ApiKeyPolicySpec{
			RestrictedScopes: []kw.Scope{"billing:*"},
			Allow: []kw.PolicyRule{
				{NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"keyward.dev/billing": "enabled"}}, Scopes: []kw.Scope{"billing:*"}},
				{NamespaceSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "keyward.dev/tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"gold", "platinum"}}}}, Scopes: []kw.Scope{"billing:read"}},
			},
		},
	}
	if err := c.Create(ctx, billing); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, name := range []string{"billing", "default"} {
			_ = c.Delete(ctx, &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}})
		}
	})
	ns := func(name string, labels map[string]string) string {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
			t.Fatal(err)
		}
		return name
	}
	plain := ns("plain", nil)
	writer := ns("writer", map[string]string{"keyward.dev/write-access": "true"})
	biller := ns("biller", map[string]string{"keyward.dev/billing": "enabled"})
	gold := ns("gold", map[string]string{"keyward.dev/tier": "gold", "keyward.dev/write-access": "true"})
	goldBiller := ns("gold-biller", map[string]string{"keyward.dev/billing": "enabled", "keyward.dev/write-access": "true"})

	createKey := func(ns, name string, scopes ...kw.Scope) error {
		return c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: kw.ApiKeySpec{Scopes: scopes}})
	}
	// The admission policy, and each ApiKeyPolicy as its parameter, take
	// effect asynchronously: wait until each ApiKeyPolicy refuses a scope
	// only it restricts (a write scope: default; billing:read: billing).
	for _, probe := range []kw.Scope{"devices:write", "billing:read"} {
		err := refusedWithin(func() error {
			err := createKey(plain, "probe", probe)
			if err == nil {
				_ = c.Delete(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: plain, Name: "probe"}})
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "scope "+string(probe)+" is restricted by ApiKeyPolicy") {
			t.Fatalf("the admission policy never refused %s in a plain namespace: %v", probe, err)
		}
	}
	policies := []kw.ApiKeyPolicy{}
	var list kw.ApiKeyPolicyList
	if err := c.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	policies = list.Items

	for i, tc := range []struct {
		name    string
		ns      string
		scopes  []kw.Scope
		message string // "" for accepted
	}{
		// Both policies refuse full access here; which one the API server
		// names first is its choice.
		{"full access, plain namespace", plain, []kw.Scope{"*"}, "scope * is restricted by ApiKeyPolicy "},
		{"a write scope, plain namespace", plain, []kw.Scope{"occupancy:read", "devices:write"}, "scope devices:write is restricted by ApiKeyPolicy default and namespace plain may not grant it; a cluster administrator can allow it with: kubectl label namespace plain keyward.dev/write-access=true"},
		{"a wildcard that grants write", plain, []kw.Scope{"devices:*"}, "scope devices:* is restricted by ApiKeyPolicy default"},
		{"read scopes, plain namespace", plain, []kw.Scope{"occupancy:read", "agents:activate"}, ""},
		{"write access where allowed", writer, []kw.Scope{"devices:*", "devices:write"}, ""},
		// Full access grants billing:*, which policy billing restricts.
		{"full access past a narrower policy", writer, []kw.Scope{"*"}, "scope * is restricted by ApiKeyPolicy billing and namespace writer may not grant it"},
		{"a wildcard segment past a narrower policy", writer, []kw.Scope{"*:read"}, "scope *:read is restricted by ApiKeyPolicy billing"},
		{"full access where every policy allows it", goldBiller, []kw.Scope{"*"}, ""},
		{"billing where only write is allowed", writer, []kw.Scope{"billing:read"}, "scope billing:read is restricted by ApiKeyPolicy billing and namespace writer may not grant it; a cluster administrator can allow it with: kubectl label namespace writer keyward.dev/billing=enabled"},
		{"billing where billing is enabled", biller, []kw.Scope{"billing:read", "billing:refund"}, ""},
		{"both policies must pass", biller, []kw.Scope{"billing:read", "billing:write"}, "scope billing:write is restricted by ApiKeyPolicy default"},
		{"matchExpressions rule allows read", gold, []kw.Scope{"billing:read", "devices:write"}, ""},
		{"matchExpressions rule allows only read", gold, []kw.Scope{"billing:refund"}, "scope billing:refund is restricted by ApiKeyPolicy billing"},
		{"read allowed does not allow billing:*", gold, []kw.Scope{"billing:*"}, "scope billing:* is restricted by ApiKeyPolicy billing"},
		{"the billing part of *:read is allowed", gold, []kw.Scope{"*:read"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := createKey(tc.ns, "k"+string(rune('a'+i)), tc.scopes...)
			if tc.message == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.message != "" && (err == nil || !strings.Contains(err.Error(), tc.message)) {
				t.Fatalf("got %v; want a refusal saying %q", err, tc.message)
			}
			// The Go rules the controller and the endpoint use agree.
			var labels map[string]string
			var n corev1.Namespace
			if err := c.Get(ctx, client.ObjectKey{Name: tc.ns}, &n); err != nil {
				t.Fatal(err)
			}
			labels = n.Labels
			scopes := make([]string, len(tc.scopes))
			for i, s := range tc.scopes {
				scopes[i] = string(s)
			}
			if denied := policy.Denied(policies, labels, scopes); (len(denied) == 0) != (tc.message == "") {
				t.Fatalf("internal/policy says %v, the API server %v", denied, err)
			}
		})
	}

	t.Run("Go and the API server's CEL agree on generated scopes", func(t *testing.T) {
		differential(t, map[string]map[string]string{plain: nil, writer: {"keyward.dev/write-access": "true"},
			biller: {"keyward.dev/billing": "enabled"}, gold: {"keyward.dev/tier": "gold", "keyward.dev/write-access": "true"}})
	})

	t.Run("label removed, then added back", func(t *testing.T) {
		if err := createKey(writer, "robot", "devices:write"); err != nil {
			t.Fatal(err)
		}
		label := func(v *string) {
			var n corev1.Namespace
			if err := c.Get(ctx, client.ObjectKey{Name: writer}, &n); err != nil {
				t.Fatal(err)
			}
			if v == nil {
				delete(n.Labels, "keyward.dev/write-access")
			} else {
				n.Labels["keyward.dev/write-access"] = *v
			}
			if err := c.Update(ctx, &n); err != nil {
				t.Fatal(err)
			}
		}
		// Admission reads namespaces from the API server's own cache, which
		// follows a label change within moments: each answer is awaited,
		// and a key that got in before the cache caught up is removed.
		settle := func(what string, accepted bool, name string) {
			t.Helper()
			var err error
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				err = createKey(writer, name, "devices:write")
				if (err == nil) == accepted {
					if !accepted && !strings.Contains(err.Error(), "restricted by ApiKeyPolicy default") {
						t.Fatalf("%s: refused for another reason: %v", what, err)
					}
					return
				}
				if err == nil {
					_ = c.Delete(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: writer, Name: name}})
				}
			}
			t.Fatalf("%s: still %v after 5s", what, err)
		}
		label(nil)
		settle("after the label is gone", false, "robot2")
		// An existing key can still be edited and archived.
		var k kw.ApiKey
		if err := c.Get(ctx, client.ObjectKey{Namespace: writer, Name: "robot"}, &k); err != nil {
			t.Fatal(err)
		}
		k.Spec.Description, k.Spec.Archived = "retired", true
		if err := c.Update(ctx, &k); err != nil {
			t.Fatalf("archiving a key whose namespace lost the permission was refused: %v", err)
		}
		yes := "true"
		label(&yes)
		settle("after the label is back", true, "robot3")
	})
}

// differential generates policies and scopes and asks the API server
// (dry-run creates, so the CEL of config/admission runs as it does for
// anyone) and internal/policy the same question: is the scope refused in
// this namespace? They must agree on every one.
func differential(t *testing.T, namespaces map[string]map[string]string) {
	ctx := context.Background()
	rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
	segs := []string{"a", "b", "read", "write", "*"}
	pattern := func() string {
		if rnd.Intn(8) == 0 {
			return "*"
		}
		n := 1 + rnd.Intn(3)
		out := make([]string, n)
		for i := range out {
			out[i] = segs[rnd.Intn(len(segs))]
		}
		return strings.Join(out, ":")
	}
	patterns := func(n int) []kw.Scope {
		seen := map[string]bool{}
		var out []kw.Scope
		for len(out) < n {
			if p := pattern(); !seen[p] {
				seen[p] = true
				out = append(out, kw.Scope(p))
			}
		}
		return out
	}
	nsNames := slices.Sorted(maps.Keys(namespaces))
	checked := 0
	for round := 0; round < 4; round++ {
		// After each round's policy, a second one restricts a sentinel
		// scope nobody may hold: the API server sees ApiKeyPolicies in the
		// order they were written, so once it refuses the sentinel it has
		// the generated policy (and no longer the last round's).
		sentinel := kw.Scope(fmt.Sprintf("sentinel%d:probe", round))
		pol := &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("generated-%d", round)},
			Spec: kw.ApiKeyPolicySpec{RestrictedScopes: patterns(1 + rnd.Intn(3))}}
		probe := &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sentinel-%d", round)},
			Spec: kw.ApiKeyPolicySpec{RestrictedScopes: []kw.Scope{sentinel}}}
		for i := 0; i < 1+rnd.Intn(3); i++ {
			sel := metav1.LabelSelector{}
			if rnd.Intn(3) > 0 {
				sel.MatchLabels = map[string]string{"keyward.dev/write-access": "true"}
				if rnd.Intn(2) == 0 {
					sel.MatchLabels = map[string]string{"keyward.dev/tier": "gold"}
				}
			}
			pol.Spec.Allow = append(pol.Spec.Allow, kw.PolicyRule{NamespaceSelector: sel, Scopes: patterns(1 + rnd.Intn(3))})
		}
		for _, p := range []*kw.ApiKeyPolicy{pol, probe} {
			if err := c.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		tryKey := func(ns string, scopes ...kw.Scope) error {
			return c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "differential"},
				Spec: kw.ApiKeySpec{Scopes: scopes}}, client.DryRunAll)
		}
		deadline := time.Now().Add(20 * time.Second)
		for tryKey(nsNames[0], sentinel) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("policy %s never took effect", pol.Name)
			}
			time.Sleep(100 * time.Millisecond)
		}
		var list kw.ApiKeyPolicyList
		if err := c.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 60; i++ {
			ns := nsNames[rnd.Intn(len(nsNames))]
			scope := pattern()
			err := tryKey(ns, kw.Scope(scope))
			if err != nil && !strings.Contains(err.Error(), "is restricted by ApiKeyPolicy") {
				t.Fatalf("scope %q in %s refused for another reason: %v", scope, ns, err)
			}
			denied := policy.Denied(list.Items, namespaces[ns], []string{scope})
			if (err != nil) != (len(denied) > 0) {
				t.Errorf("scope %q in namespace %s (labels %v) under policy %s %v: the API server says %v, internal/policy %v",
					scope, ns, namespaces[ns], pol.Name, pol.Spec, err, denied)
			}
			checked++
		}
		for _, p := range []*kw.ApiKeyPolicy{pol, probe} {
			if err := c.Delete(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d generated scopes judged alike by the API server and internal/policy", checked)
}

// TestPolicySelectorsOnlyOnGuardedLabels: an ApiKeyPolicy may select
// namespaces only by labels tenants cannot set, keyward.dev/ labels. Any
// other label can be set by whoever may create or label namespaces, who
// could then grant their own keys restricted scopes; the namespace's name
// too (kubernetes.io/metadata.name), which its creator chooses.
func TestPolicySelectorsOnlyOnGuardedLabels(t *testing.T) {
	ctx := context.Background()
	applyAdmission(t)
	policyOf := func(name string, sel metav1.LabelSelector) *kw.ApiKeyPolicy {
		return &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: kw.ApiKeyPolicySpec{
			RestrictedScopes: []kw.Scope{"ledger:*"},
			Allow:            []kw.PolicyRule{{NamespaceSelector: sel, Scopes: []kw.Scope{"ledger:*"}}},
		}}
	}
	expr := func(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
	}
	for _, name := range []string{"ledger-team", "ledger-free", "ledger-legacy"} {
		t.Cleanup(func() { _ = c.Delete(ctx, &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}) })
	}
	t.Run("other labels are refused with what to select on instead", func(t *testing.T) {
		team := policyOf("ledger-team", metav1.LabelSelector{MatchLabels: map[string]string{"team": "ledger"}})
		err := refusedWithin(func() error { return c.Create(ctx, team.DeepCopy(), client.DryRunAll) })
		for _, want := range []string{"selects on the label team,", "kubectl label namespace NAME keyward.dev/team="} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("a selector on team: %v; want a refusal saying %q", err, want)
			}
		}
		for _, sel := range []metav1.LabelSelector{
			expr("tier", metav1.LabelSelectorOpNotIn, "free"),
			expr("example.com/sandbox", metav1.LabelSelectorOpDoesNotExist),
			{MatchLabels: map[string]string{"keyward.dev/ledger": "true", "tier": "gold"}},
			{MatchLabels: map[string]string{"keyward.dev.example.com/ledger": "true"}},
			// A policy naming a namespace that does not exist yet, or no
			// longer, would grant to whoever creates it.
			expr("kubernetes.io/metadata.name", metav1.LabelSelectorOpIn, "ledger-a"),
		} {
			if err := c.Create(ctx, policyOf("ledger-free", sel), client.DryRunAll); err == nil || !strings.Contains(err.Error(), "selects on the label") {
				t.Errorf("selector %v: %v; want a refusal", sel, err)
			}
		}
	})
	t.Run("keyward.dev/ labels are accepted", func(t *testing.T) {
		for _, sel := range []metav1.LabelSelector{
			{MatchLabels: map[string]string{"keyward.dev/ledger": "true"}},
			expr("keyward.dev/tier", metav1.LabelSelectorOpNotIn, "free"),
			{},
		} {
			if err := c.Create(ctx, policyOf("ledger-free", sel), client.DryRunAll); err != nil {
				t.Errorf("selector %v: %v", sel, err)
			}
		}
	})
	for _, name := range []string{"ledger-a"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"tier": "gold"}}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("a rule written before the check allows nothing", func(t *testing.T) {
		legacy := policyOf("ledger-legacy", expr("tier", metav1.LabelSelectorOpNotIn, "free"))
		legacy.Spec.RestrictedScopes = []kw.Scope{"vault:*"}
		legacy.Spec.Allow[0].Scopes = []kw.Scope{"vault:*"}
		writtenBefore(t, "keyward-policy-selectors", func() error { return c.Create(ctx, legacy) })
		// ledger-a is labelled tier=gold: NotIn free would choose it, and
		// whoever labels namespaces decides that. The rule allows nothing,
		// at admission and in Go.
		err := refusedWithin(func() error {
			return c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "ledger-a", Name: "vault"},
				Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"vault:read"}}}, client.DryRunAll)
		})
		if err == nil || !strings.Contains(err.Error(), "scope vault:read is restricted by ApiKeyPolicy ledger-legacy") {
			t.Fatalf("vault:read in ledger-a under a rule on tier: %v; want a refusal", err)
		}
		var n corev1.Namespace
		if err := c.Get(ctx, client.ObjectKey{Name: "ledger-a"}, &n); err != nil {
			t.Fatal(err)
		}
		if denied := policy.Denied([]kw.ApiKeyPolicy{*legacy}, n.Labels, []string{"vault:read"}); len(denied) == 0 {
			t.Fatal("internal/policy lets a rule on tier allow vault:read")
		}
		// Any update of it must now select on guarded labels (the binding
		// back takes effect asynchronously too).
		legacy.Spec.Allow[0].Scopes = []kw.Scope{"vault:read"}
		err = refusedWithin(func() error { return c.Update(ctx, legacy.DeepCopy(), client.DryRunAll) })
		if err == nil || !strings.Contains(err.Error(), "selects on the label tier") {
			t.Fatalf("updating the old rule: %v; want a refusal", err)
		}
	})
}
