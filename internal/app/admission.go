package app

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// AdmissionInEffect waits until the admission policies of config/admission
// refuse what each exists to refuse, and returns how long that took. The
// API server takes a policy and its binding into effect asynchronously
// (its informers must see both, then it compiles them): about 2 s on an
// idle machine, later on a loaded one. Until then a restricted scope, a
// record written by hand or an oversized ApiKey would be accepted, so
// keyward dev waits for this before it says it is ready, and the tenancy
// tests before they attack.
//
// Each probe is a dry-run request of c, which must be a cluster admin
// other than keyward's controller (exempt from the size bound), in
// namespace ns, which must exist and carry no keyward.dev/ label:
//   - keyward-apikey-size: an ApiKey with 33 labels;
//   - keyward-records-writers: an ApiKeyRecord created by c;
//   - keyward-policy-selectors: an ApiKeyPolicy that selects on team=a;
//   - keyward-restricted-scopes: an ApiKey with the scope '*', only when
//     an ApiKeyPolicy restricts '*' (no policy, no restriction: call it
//     after applying config/policy).
//
// keyward-namespace-consent refuses only users who may not update
// ApiKeyPolicies, which a cluster admin may: it is not probed.
func AdmissionInEffect(ctx context.Context, c client.Client, ns string, within time.Duration) (time.Duration, error) {
	start := time.Now()
	key := func(name string) *kw.ApiKey {
		return &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"probe:read"}}}
	}
	type probe struct {
		policy string
		says   string
		try    func() error
	}
	probes := []probe{
		{"keyward-apikey-size", "has 33 labels", func() error {
			k := key("admission-probe-size")
			k.Labels = map[string]string{}
			for i := range 33 {
				k.Labels[fmt.Sprintf("probe-%02d", i)] = "x"
			}
			return c.Create(ctx, k, client.DryRunAll)
		}},
		{"keyward-records-writers", "ApiKeyRecords are written by keyward only", func() error {
			return c.Create(ctx, &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "admission-probe"}}, client.DryRunAll)
		}},
		{"keyward-policy-selectors", "a namespaceSelector selects on the label team", func() error {
			return c.Create(ctx, &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "admission-probe"},
				Spec: kw.ApiKeyPolicySpec{RestrictedScopes: []kw.Scope{"*"}, Allow: []kw.PolicyRule{{
					NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}},
					Scopes:            []kw.Scope{"*"}}}}}, client.DryRunAll)
		}},
	}
	var policies kw.ApiKeyPolicyList
	if err := c.List(ctx, &policies); err != nil {
		return 0, err
	}
	for _, p := range policies.Items {
		if slices.Contains(p.Spec.RestrictedScopes, "*") {
			probes = append(probes, probe{"keyward-restricted-scopes", "is restricted by ApiKeyPolicy", func() error {
				k := key("admission-probe-scopes")
				k.Spec.Scopes = []kw.Scope{"*"}
				return c.Create(ctx, k, client.DryRunAll)
			}})
			break
		}
	}
	deadline := start.Add(within)
	for _, p := range probes {
		for {
			err := p.try()
			if err != nil && strings.Contains(err.Error(), p.says) {
				break
			}
			if time.Now().After(deadline) {
				last := "accepted"
				if err != nil {
					last = err.Error()
				}
				return time.Since(start), fmt.Errorf("admission policy %s not in effect after %s: a request it refuses got %q, not a refusal saying %q",
					p.policy, within, last, p.says)
			}
			select {
			case <-ctx.Done():
				return time.Since(start), ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return time.Since(start), nil
}
