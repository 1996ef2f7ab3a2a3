package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/testenv"
)

var (
	c   client.Client
	cfg *rest.Config
)

func TestMain(m *testing.M) {
	var env *envtest.Environment
	env, cfg, c = testenv.StartWithClient()
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func apply(t *testing.T, manifest string) error {
	t.Helper()
	return applyIn(t, "default", manifest)
}

func applyIn(t *testing.T, ns, manifest string) error {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &u.Object); err != nil {
		t.Fatalf("bad test manifest: %v", err)
	}
	u.SetNamespace(ns)
	// Strict, as kubectl apply and create validate by default: an unknown
	// field is refused, not dropped.
	return c.Create(context.Background(), u, client.FieldValidation("Strict"))
}

const header = "apiVersion: keyward.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: %s}\n"

func TestApiServerRefusesBadManifests(t *testing.T) {
	for _, tc := range []struct {
		name, spec, message string
	}{
		{"no scopes", "spec: {displayName: x}", "spec.scopes: Required value"},
		{"empty scopes", "spec: {scopes: []}", "spec.scopes: Invalid value: 0: spec.scopes in body should have at least 1 items"},
		{"upper-case scope", "spec: {scopes: [Occupancy:Read]}", "a scope is lowercase words"},
		{"space in scope", "spec: {scopes: ['occupancy read']}", "a scope is lowercase words"},
		{"empty segment", "spec: {scopes: ['occupancy::read']}", "a scope is lowercase words"},
		{"trailing colon", "spec: {scopes: ['occupancy:']}", "a scope is lowercase words"},
		{"partial wildcard", "spec: {scopes: ['dev*:read']}", "a scope is lowercase words"},
		{"empty scope", "spec: {scopes: ['']}", "spec.scopes[0]: Invalid value"},
		{"duplicate scope", "spec: {scopes: [a:read, a:read]}", "spec.scopes[1]: Duplicate value"},
		{"expiresAt not a time", "spec: {scopes: [a], expiresAt: tomorrow}", "spec.expiresAt"},
		{"bad secretName", "spec: {scopes: [a], secretName: My_Secret}", "spec.secretName: Invalid value"},
		{"unknown state", "spec: {scopes: [a]}\nstatus: {state: Happy}", ""}, // status is ignored on create
		{"displayName too long", "spec: {scopes: [a], displayName: " + strings.Repeat("x", 129) + "}", "spec.displayName: Too long"},
		{"negative generation", "spec: {scopes: [a], rotation: {generation: -1}}", "spec.rotation.generation: Invalid value: -1"},
		{"gracePeriod not a duration", "spec: {scopes: [a], rotation: {gracePeriod: one day}}", "spec.rotation.gracePeriod: Invalid value"},
		{"every too short", "spec: {scopes: [a], rotation: {every: 30s}}", "spec.rotation.every must be at least 1m"},
		{"every not a duration", "spec: {scopes: [a], rotation: {every: 90d}}", "spec.rotation.every: Invalid value"},
		{"grace period zero", "spec: {scopes: [a], rotation: {generation: 2, gracePeriod: 0s, every: 2160h}}", ""},
		{"rate zero", "spec: {scopes: [a], limits: {requestsPerSecond: 0}}", "spec.limits.requestsPerSecond: Invalid value: 0: spec.limits.requestsPerSecond in body should be greater than or equal to 1"},
		{"rate negative", "spec: {scopes: [a], limits: {requestsPerSecond: -5}}", "spec.limits.requestsPerSecond: Invalid value: -5"},
		{"rate too high", "spec: {scopes: [a], limits: {requestsPerSecond: 1000001}}", "should be less than or equal to 1000000"},
		{"rate as words", "spec: {scopes: [a], limits: {requestsPerSecond: fifty}}", "spec.limits.requestsPerSecond: Invalid value: \"string\""},
		{"rate fractional", "spec: {scopes: [a], limits: {requestsPerSecond: 0.5}}", "spec.limits.requestsPerSecond"},
		{"burst without rate", "spec: {scopes: [a], limits: {burst: 10}}", "spec.limits.burst needs spec.limits.requestsPerSecond"},
		{"burst zero", "spec: {scopes: [a], limits: {requestsPerSecond: 5, burst: 0}}", "spec.limits.burst: Invalid value: 0"},
		{"quota zero", "spec: {scopes: [a], limits: {requestsPerDay: 0}}", "spec.limits.requestsPerDay: Invalid value: 0"},
		{"quota too high", "spec: {scopes: [a], limits: {requestsPerDay: 10000000001}}", "should be less than or equal to 10000000000"},
		{"unknown limit", "spec: {scopes: [a], limits: {requestsPerMinute: 5}}", `unknown field "spec.limits.requestsPerMinute"`},
		{"limits", "spec: {scopes: [a], limits: {requestsPerSecond: 50, burst: 100, requestsPerDay: 1000}}", ""},
		{"daily quota only", "spec: {scopes: [a], limits: {requestsPerDay: 10000000000}}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "bad-" + strings.ReplaceAll(tc.name, " ", "-")
			err := apply(t, fmt.Sprintf(header, name)+tc.spec)
			if tc.message == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("the API server accepted it; want a refusal saying %q", tc.message)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("refusal %q does not say %q", err, tc.message)
			}
		})
	}
}

func TestApiServerAcceptsGoodScopes(t *testing.T) {
	// A namespace allowed every restricted scope of the restricted-scope
	// test's ApiKeyPolicies, should they still be in force: this test is
	// about syntax.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "syntax",
		Labels: map[string]string{"keyward.dev/write-access": "true", "billing": "enabled"}}}
	if err := c.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	for i, scope := range []string{"*", "*:write", "devices:*", "occupancy:read", "agents:activate", "a", "v1.devices:read-all", "x_y:z"} {
		if err := applyIn(t, "syntax", fmt.Sprintf(header, fmt.Sprintf("good-%d", i))+"spec: {scopes: ['"+scope+"']}"); err != nil {
			t.Errorf("scope %q refused: %v", scope, err)
		}
	}
}

func TestApiServerRefusesBadUpdates(t *testing.T) {
	ctx := context.Background()
	key := &kw.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Name: "updates", Namespace: "default"},
		Spec:       kw.ApiKeySpec{Scopes: []kw.Scope{"a:read"}, SecretName: "updates-key"},
	}
	if err := c.Create(ctx, key); err != nil {
		t.Fatal(err)
	}
	named := &kw.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Name: "unnamed", Namespace: "default"},
		Spec:       kw.ApiKeySpec{Scopes: []kw.Scope{"a:read"}},
	}
	if err := c.Create(ctx, named); err != nil {
		t.Fatal(err)
	}
	rotated := &kw.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Name: "rotated", Namespace: "default"},
		Spec:       kw.ApiKeySpec{Scopes: []kw.Scope{"a:read"}, Rotation: &kw.Rotation{Generation: 3}},
	}
	archivedKey := &kw.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Name: "archived-rotation", Namespace: "default"},
		Spec:       kw.ApiKeySpec{Scopes: []kw.Scope{"a:read"}, Archived: true},
	}
	for _, o := range []*kw.ApiKey{rotated, archivedKey} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		obj     *kw.ApiKey
		change  func(*kw.ApiKey)
		message string
	}{
		{"change secretName", key, func(k *kw.ApiKey) { k.Spec.SecretName = "other" }, "spec.secretName cannot change once set"},
		{"drop secretName", key, func(k *kw.ApiKey) { k.Spec.SecretName = "" }, "spec.secretName cannot change once set"},
		{"set secretName later", named, func(k *kw.ApiKey) { k.Spec.SecretName = "late" }, "spec.secretName cannot change once set"},
		{"remove all scopes", key, func(k *kw.ApiKey) { k.Spec.Scopes = nil }, "spec.scopes: Required value"},
		{"lower the generation", rotated, func(k *kw.ApiKey) { k.Spec.Rotation.Generation = 2 }, "spec.rotation.generation cannot decrease"},
		{"drop the generation", rotated, func(k *kw.ApiKey) { k.Spec.Rotation = nil }, "spec.rotation.generation cannot decrease"},
		{"rotate an archived key", archivedKey, func(k *kw.ApiKey) { k.Spec.Rotation = &kw.Rotation{Generation: 1} }, "an archived key cannot be rotated"},
		{"archive and rotate at once", rotated, func(k *kw.ApiKey) { k.Spec.Archived = true; k.Spec.Rotation.Generation = 4 }, "an archived key cannot be rotated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj := tc.obj.DeepCopy()
			if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
				t.Fatal(err)
			}
			tc.change(obj)
			err := c.Update(ctx, obj)
			if err == nil || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("update gave %v; want a refusal saying %q", err, tc.message)
			}
		})
	}

	t.Run("un-archive", func(t *testing.T) {
		obj := key.DeepCopy()
		if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			t.Fatal(err)
		}
		obj.Spec.Archived = true
		if err := c.Update(ctx, obj); err != nil {
			t.Fatalf("archiving refused: %v", err)
		}
		obj.Spec.Archived = false // omitempty: the field disappears, which must not slip through
		err := c.Update(ctx, obj)
		const want = "archival is one-way: spec.archived cannot go back to false"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("un-archiving gave %v; want a refusal saying %q", err, want)
		}
		patch := []byte(`{"spec":{"archived":false}}`)
		err = c.Patch(ctx, obj, client.RawPatch("application/merge-patch+json", patch))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("un-archiving by patch gave %v; want a refusal saying %q", err, want)
		}
	})
}

// TestLongNames: a name too long for the default Secret name needs
// spec.secretName (the CRD), and any name over 63 characters is refused
// on create (admission).
func TestLongNames(t *testing.T) {
	name := strings.Repeat("n", 247)
	err := apply(t, fmt.Sprintf(header, name)+"spec: {scopes: [a]}")
	const want = "set spec.secretName"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v; want a refusal saying %q", err, want)
	}
	// With spec.secretName the CRD takes it, but keyward-apikey-size
	// (config/admission/size.yaml) does not: the name labels the key's
	// Secret, and a label value is at most 63 characters, so such a key
	// was never issued.
	err = apply(t, fmt.Sprintf(header, name)+"spec: {scopes: [a], secretName: long-key}")
	if err == nil || !strings.Contains(err.Error(), "is 247 characters; keyward takes at most 63") {
		t.Fatalf("with spec.secretName: %v; want the admission policy's refusal", err)
	}
	if err := apply(t, fmt.Sprintf(header, strings.Repeat("n", 63))+"spec: {scopes: [a]}"); err != nil {
		t.Fatalf("a name of 63 characters: %v", err)
	}
}
