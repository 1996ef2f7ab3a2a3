package v1alpha1_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

// TestArchivingAnApiKeyWrittenBeforeTheSizePolicy: keyward-apikey-size
// ratchets, so an ApiKey written before it, far over its bounds, can still
// be archived. With 120,000 labels, summing their bytes ran out of CEL's
// cost budget and the policy (failurePolicy Fail) refused the archival
// after 9 s. An update that leaves the bounded metadata as it was is not
// judged; one that grows it still is.
func TestArchivingAnApiKeyWrittenBeforeTheSizePolicy(t *testing.T) {
	ctx := context.Background()
	if _, err := manifests.ApplyDir(ctx, cfg, testenv.Root()+"/config/admission"); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}}); err != nil {
		t.Fatal(err)
	}
	labelled := func(name string, n int) *kw.ApiKey {
		k := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: name, Labels: map[string]string{}},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"a:read"}}}
		for i := range n {
			k.Labels[fmt.Sprintf("l%x", i)] = ""
		}
		return k
	}
	// Written before the policy: without its binding.
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	if err := c.Get(ctx, client.ObjectKey{Name: "keyward-apikey-size"}, binding); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, binding); err != nil {
		t.Fatal(err)
	}
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = c.Create(ctx, labelled("old", 120_000)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("without the policy: %v", err)
	}
	if _, err := manifests.ApplyDir(ctx, cfg, testenv.Root()+"/config/admission"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = c.Create(ctx, labelled("probe", 33), client.DryRunAll); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "has 33 labels") {
		t.Fatalf("the policy is not back: %v", err)
	}
	start := time.Now()
	if err := c.Patch(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: "old"}},
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"archived":true}}`))); err != nil {
		t.Fatalf("archiving an ApiKey of 120,000 labels written before the policy: %v", err)
	}
	t.Logf("archived in %v", time.Since(start))
	err = c.Patch(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: "old"}},
		client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"grown":"x"}}}`)))
	if err == nil {
		t.Fatal("a label added to an ApiKey far over the bound was accepted")
	}
	t.Logf("growing it further: %v", err)
}
