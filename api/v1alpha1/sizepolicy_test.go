package v1alpha1_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// TestArchivingAnApiKeyWrittenBeforeTheSizePolicy: keyward-apikey-size
// ratchets, so an ApiKey written before it, far over its bounds, can still
// be archived. With 120,000 labels, summing their bytes ran out of CEL's
// cost budget and the policy (failurePolicy Fail) refused the archival
// after 9 s. An update that leaves the bounded metadata as it was is not
// judged; one that grows it still is.
func TestArchivingAnApiKeyWrittenBeforeTheSizePolicy(t *testing.T) {
	ctx := context.Background()
	applyAdmission(t)
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
	writtenBefore(t, "keyward-apikey-size", func() error { return c.Create(ctx, labelled("old", 120_000)) })
	err := refusedWithin(func() error { return c.Create(ctx, labelled("probe", 33), client.DryRunAll) })
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
	if err == nil || !strings.Contains(err.Error(), "has 120001 labels") {
		t.Fatalf("a label added to an ApiKey far over the bound: %v; want a refusal", err)
	}
}
