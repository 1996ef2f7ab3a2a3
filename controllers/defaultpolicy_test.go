package controllers

import (
	"context"
	"io"
	"reflect"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/config"
	"keyward.dev/keyward/internal/logging"
)

// The controller creates the policy of config/policy/default.yaml (as the
// binary embeds it) when it is missing, and never changes an existing one:
// an administrator's edit survives every restart. Not parallel: an
// ApiKeyPolicy applies to every namespace, so it must be gone before the
// parallel tests run.
func TestDefaultPolicyIsCreatedOnceAndNeverOverwritten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := ParsePolicy(config.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "default" || len(p.Spec.RestrictedScopes) == 0 {
		t.Fatalf("config/policy/default.yaml: %+v", p)
	}
	p.Name = "default-policy-test"
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), p.DeepCopy()) })
	d := &DefaultPolicy{Client: k8s, Policy: p, Log: logging.New(io.Discard, 0)}

	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got := &kw.ApiKeyPolicy{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), got); err != nil {
		t.Fatalf("the default policy was not created: %v", err)
	}
	if !equality.Semantic.DeepEqual(got.Spec, p.Spec) {
		t.Fatalf("created %+v, want %+v", got.Spec, p.Spec)
	}

	// An administrator relaxes it; the next start leaves it as it is.
	got.Spec.RestrictedScopes = []kw.Scope{"*"}
	got.Spec.Allow = nil
	if err := k8s.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	again := &kw.ApiKeyPolicy{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), again); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again.Spec.RestrictedScopes, []kw.Scope{"*"}) || again.ResourceVersion != got.ResourceVersion {
		t.Fatalf("the administrator's edit was overwritten: %+v", again.Spec)
	}
	if !d.NeedLeaderElection() {
		t.Error("only the elected controller may create the policy")
	}
}

func TestParsePolicyRefusesOtherObjects(t *testing.T) {
	for _, doc := range []string{"kind: ConfigMap\nmetadata: {name: x}\n", "kind: ApiKeyPolicy\n", "kind: ApiKeyPolicy\nmetadata: {name: x}\nspec: {bogus: 1}\n"} {
		if _, err := ParsePolicy([]byte(doc)); err == nil {
			t.Errorf("accepted %q", doc)
		}
	}
}
