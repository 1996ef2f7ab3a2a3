package tenancy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/testenv"
)

// TestTenantsCannotInflateApiKeys: every endpoint replica lists every
// ApiKey, a page at a time, so an ApiKey's size is every tenant's memory.
// A tenant with edit tries each way Kubernetes leaves open to grow one
// towards etcd's 1.5 MiB (labels, annotations, finalizers, owners,
// server-side-apply managers), on create and on update; each is refused
// with a message that says what to remove. What GitOps tools write still
// passes, the largest ApiKey the bounds allow is measured on the API
// server against the replica's page budget (index.MaxApiKeyBytes), and an
// ApiKey that was already over a bound (written before the policy) can
// still be archived.
func TestTenantsCannotInflateApiKeys(t *testing.T) {
	ctx := context.Background()
	tenant(t, "bloat", nil, "bella", "edit")
	bella := as(t, "bella")
	eventually(t, 30*time.Second, "edit to aggregate keyward's role", func() (bool, string) {
		err := bella.List(ctx, &kw.ApiKeyList{}, client.InNamespace("bloat"))
		return err == nil, fmt.Sprint(err)
	})
	key := func(name string) *kw.ApiKey {
		return &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "bloat", Name: name},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"payments:read"}}}
	}
	refused := func(t *testing.T, what string, err error, says string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: accepted", what)
		}
		if !strings.Contains(err.Error(), says) {
			t.Fatalf("%s: %v; want a refusal saying %q", what, err, says)
		}
	}

	t.Run("on create", func(t *testing.T) {
		for _, c := range []struct {
			what  string
			bloat func(*kw.ApiKey)
			says  string
		}{
			{"33 labels", func(k *kw.ApiKey) { k.Labels = testenv.Labels(33, 8, 8) }, "has 33 labels; keyward takes at most 32"},
			{"4 KiB of labels", func(k *kw.ApiKey) { k.Labels = testenv.Labels(32, 70, 63) }, "bytes of labels (keys and values); keyward takes at most 4096"},
			{"33 annotations", func(k *kw.ApiKey) { k.Annotations = testenv.Annotations(33, 8, 8) }, "has 33 annotations; keyward takes at most 32"},
			{"2 KiB of annotation keys", func(k *kw.ApiKey) { k.Annotations = testenv.Annotations(20, 110, 1) }, "bytes of annotation keys; keyward takes at most 2048"},
			{"24 KiB of annotations", func(k *kw.ApiKey) { k.Annotations = testenv.Annotations(4, 20, 6200) }, "bytes of annotations (keys and values"},
			// Bytes, not characters: 9,000 '€' are 27,000 bytes in etcd.
			{"24 KiB of annotations in 9,000 characters", func(k *kw.ApiKey) {
				k.Annotations = map[string]string{"example.com/note": strings.Repeat("€", 9000)}
			}, "has 27016 bytes of annotations"},
			{"9 finalizers", func(k *kw.ApiKey) { k.Finalizers = testenv.Finalizers(9) }, "has 9 finalizers; keyward takes at most 8"},
			{"9 owners", func(k *kw.ApiKey) { k.OwnerReferences = owners(t, 9) }, "has 9 owner references; keyward takes at most 8"},
			// The name labels the key's Secret: a longer one would never
			// be issued.
			{"a name of 64 characters", func(k *kw.ApiKey) { k.Name = testenv.Pad("long", 64, 64) }, "is 64 characters; keyward takes at most 63"},
		} {
			k := key("create")
			c.bloat(k)
			refused(t, c.what, bella.Create(ctx, k), c.says)
		}
	})

	t.Run("on update", func(t *testing.T) {
		must(t, bella.Create(ctx, key("grower")))
		for _, c := range []struct {
			what     string
			metadata map[string]any
			says     string
		}{
			{"33 labels", map[string]any{"labels": testenv.Labels(33, 8, 8)}, "has 33 labels"},
			{"24 KiB of annotations", map[string]any{"annotations": testenv.Annotations(4, 20, 8200)}, "bytes of annotations"},
			{"9 finalizers", map[string]any{"finalizers": testenv.Finalizers(9)}, "has 9 finalizers"},
		} {
			patch := mustJSON(t, map[string]any{"metadata": c.metadata})
			err := bella.Patch(ctx, key("grower"), client.RawPatch(types.MergePatchType, patch))
			refused(t, c.what, err, c.says)
		}
	})

	t.Run("a fourth server-side-apply manager", func(t *testing.T) {
		manifest := applyManifest("appliers", testenv.Labels(8, 20, 20))
		for i := 1; i <= 3; i++ {
			if out, err := kubectl(t, manifest, "apply", "--server-side", fmt.Sprintf("--field-manager=tool-%d", i), "-f", "-"); err != nil {
				t.Fatalf("apply as manager %d: %v\n%s", i, err, out)
			}
		}
		out, err := kubectl(t, manifest, "apply", "--server-side", "--field-manager=tool-4", "-f", "-")
		if err == nil {
			t.Fatalf("a fourth manager was accepted:\n%s", out)
		}
		refused(t, "a fourth manager", errors.New(out), "would have 4 server-side-apply field managers")
		for i := 1; i <= 3; i++ {
			refused(t, "a fourth manager", errors.New(out), fmt.Sprintf("tool-%d", i))
		}
		// The way out the message gives: forget the managers, then apply.
		if out, err := kubectl(t, "", "-n", "bloat", "patch", "apikey", "appliers", "--type=merge",
			"-p", `{"metadata":{"managedFields":[{}]}}`); err != nil {
			t.Fatalf("resetting the managers: %v\n%s", err, out)
		}
		if out, err := kubectl(t, manifest, "apply", "--server-side", "--field-manager=tool-4", "-f", "-"); err != nil {
			t.Fatalf("apply after the reset: %v\n%s", err, out)
		}
	})

	t.Run("GitOps manifests pass and issue", func(t *testing.T) {
		// Client-side apply keeps the whole manifest in an annotation;
		// Argo CD and Helm add their labels and annotations.
		manifest := applyManifest("gitops", map[string]string{
			"app.kubernetes.io/name": "payments", "app.kubernetes.io/instance": "payments-prod",
			"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/part-of": "shop",
			"helm.sh/chart": "payments-1.2.3", "kustomize.toolkit.fluxcd.io/name": "payments",
			"kustomize.toolkit.fluxcd.io/namespace": "flux-system"})
		manifest = strings.Replace(manifest, "  name: gitops\n", "  name: gitops\n  annotations:\n"+
			"    argocd.argoproj.io/tracking-id: payments:keyward.dev/ApiKey:bloat/gitops\n"+
			"    meta.helm.sh/release-name: payments\n    meta.helm.sh/release-namespace: bloat\n"+
			"    description: "+strings.Repeat("a long note about this key ", 100)+"\n", 1)
		if out, err := kubectl(t, manifest, "apply", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply: %v\n%s", err, out)
		}
		if out, err := kubectl(t, manifest, "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply --server-side: %v\n%s", err, out)
		}
		awaitKey(t, bella, "bloat", "gitops")
	})

	t.Run("the largest ApiKey fits the page budget", func(t *testing.T) {
		// At every bound at once, with the largest spec the CRD takes and
		// the longest name.
		k := testenv.LargestApiKey("bloat", "largest")
		name := k.Name
		k.OwnerReferences = owners(t, 8)
		must(t, bella.Create(ctx, k))
		// Three appliers, each owning every label, annotation, finalizer
		// and scope.
		body, err := testenv.LargestApplyBody(k)
		must(t, err)
		for i, applier := range testenv.LargestAppliers() {
			if err := bella.Patch(ctx, key(name), client.RawPatch(types.ApplyPatchType, body),
				client.FieldOwner(applier), client.ForceOwnership); err != nil {
				t.Fatalf("applier %d: %v", i+1, err)
			}
		}
		// The controller still adds its finalizer and issues the key.
		awaitKey(t, bella, "bloat", name)
		cs, err := kubernetes.NewForConfig(cfg)
		must(t, err)
		raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/apis", kw.GroupVersion.String(), "namespaces/bloat/apikeys", name).DoRaw(ctx)
		must(t, err)
		t.Logf("the largest ApiKey a tenant can write: %d bytes of JSON (index.MaxApiKeyBytes %d)", len(raw), index.MaxApiKeyBytes)
		if len(raw) > index.MaxApiKeyBytes {
			t.Fatalf("an ApiKey of %d bytes passed admission; the list page budget assumes at most %d", len(raw), index.MaxApiKeyBytes)
		}
	})

	t.Run("an ApiKey already over a bound can still be archived", func(t *testing.T) {
		binding := &admissionv1.ValidatingAdmissionPolicyBinding{}
		must(t, admin.Get(ctx, client.ObjectKey{Name: "keyward-apikey-size"}, binding))
		must(t, admin.Delete(ctx, binding))
		restored := false
		restore := func() {
			if !restored {
				restored = true
				b := &admissionv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: binding.Name}, Spec: binding.Spec}
				must(t, admin.Create(ctx, b))
			}
		}
		defer restore()
		old := key("legacy")
		old.Labels = testenv.Labels(40, 8, 8)
		eventually(t, 20*time.Second, "an ApiKey of 40 labels to pass without the policy", func() (bool, string) {
			err := bella.Create(ctx, old.DeepCopy())
			return err == nil, fmt.Sprint(err)
		})
		// The wait keyward dev and these tests rely on sees the gap, and
		// names the policy.
		_, err := app.AdmissionInEffect(ctx, admin, "default", 2*time.Second)
		if err == nil || !strings.Contains(err.Error(), "admission policy keyward-apikey-size not in effect") {
			t.Fatalf("without the size binding, AdmissionInEffect said %v", err)
		}
		restore()
		_, err = app.AdmissionInEffect(ctx, admin, "default", 20*time.Second)
		must(t, err)
		probe := key("probe")
		probe.Labels = testenv.Labels(33, 8, 8)
		refused(t, "33 labels once the policy is back", bella.Create(ctx, probe), "has 33 labels")
		_, token := awaitKey(t, bella, "bloat", "legacy")
		archive := fmt.Sprintf(`{"metadata":{"labels":{%q:null}},"spec":{"archived":true}}`, testenv.Qualified(0, 8))
		must(t, bella.Patch(ctx, key("legacy"), client.RawPatch(types.MergePatchType, []byte(archive))))
		eventually(t, 5*time.Second, "the archived key to be refused", func() (bool, string) {
			code, _ := check(t, token)
			return code == 401, fmt.Sprint(code)
		})
		err = bella.Patch(ctx, key("legacy"), client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"l-999":"x","l-998":"x"}}}`)))
		refused(t, "growing past the bound again", err, "has 41 labels")
	})
}

// owners are n ConfigMaps of namespace bloat with the longest names, as
// owner references (real ones: the garbage collector would delete an
// ApiKey whose owners are gone).
func owners(t *testing.T, n int) []metav1.OwnerReference {
	t.Helper()
	var o []metav1.OwnerReference
	for i := range n {
		cm := &corev1.ConfigMap{}
		name := testenv.OwnerName(i)
		if err := admin.Get(context.Background(), client.ObjectKey{Namespace: "bloat", Name: name}, cm); apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "bloat", Name: name}}
			must(t, admin.Create(context.Background(), cm))
		} else {
			must(t, err)
		}
		o = append(o, metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: cm.Name, UID: cm.UID})
	}
	return o
}

// applyManifest is an ApiKey manifest in namespace bloat.
func applyManifest(name string, labels map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: keyward.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: %s\n  namespace: bloat\n  labels:\n", name)
	for k, v := range labels {
		fmt.Fprintf(&b, "    %s: %q\n", k, v)
	}
	b.WriteString("spec:\n  scopes: [\"payments:read\"]\n")
	return b.String()
}

// kubectl runs the real kubectl as bella (impersonated), stdin as input.
func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl"),
		append([]string{"--kubeconfig", adminKubeconfig, "--as", "bella", "--as-group", "system:authenticated"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	return b
}
