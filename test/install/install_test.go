package install

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	releasecommon "helm.sh/helm/v4/pkg/release/common"
	release "helm.sh/helm/v4/pkg/release/v1"
	appsv1 "k8s.io/api/apps/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/testenv"
)

// freshCluster starts an API server with nothing of keyward's installed and
// returns a client and an admin kubeconfig file for it.
func freshCluster(t *testing.T) (client.Client, string) {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		os.Setenv("KUBEBUILDER_ASSETS", filepath.Join(testenv.Root(), "bin", "controlplane"))
	}
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start a control plane: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = apiextensionsv1.AddToScheme(s)
	_ = kw.AddToScheme(s)
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return c, path
}

// kubectl apply -k config/default on an empty cluster is accepted in one go:
// exit 0, no object refused because its CRD was not established yet, every
// Deployment's pod template valid (pods cannot run here; the API server
// validates the templates on create). Applied again (an upgrade), it is
// accepted as well.
func TestKustomizeInstallsInOneGo(t *testing.T) {
	c, kubeconfig := freshCluster(t)
	for i := range 2 {
		cmd := exec.Command(kubectlPath(t), "--kubeconfig", kubeconfig, "apply", "-k", filepath.Join(testenv.Root(), "config", "default"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl apply -k config/default (%d): %v\n%s", i+1, err, out)
		}
		if strings.Contains(string(out), "Warning") {
			t.Errorf("kubectl apply -k config/default (%d) warned:\n%s", i+1, out)
		}
	}
	checkInstalled(t, c, 3)
	out, err := exec.Command(kubectlPath(t), "--kubeconfig", kubeconfig, "apply", "-k",
		filepath.Join(testenv.Root(), "config", "admission-finalizer")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply -k config/admission-finalizer: %v\n%s", err, out)
	}
	checkFinalizerPolicy(t, c)
}

// helm install (Helm v4 as a Go module) on an empty cluster: deployed, not
// left pending; helm upgrade changes what values say; helm uninstall keeps
// the CRDs and so every key; a new install adopts the kept CRDs.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	c, kubeconfig := freshCluster(t)
	ns := namespace
	cfg := helmConfig(t, kubeconfig, ns)
	ch := loadChart(t)

	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace = "keyward", ns, true
	in.ServerSideApply = true
	in.WaitStrategy = kube.HookOnlyStrategy // pods cannot run here: wait for nothing but hooks
	in.Timeout = time.Minute
	rel, err := in.RunWithContext(context.Background(), ch, nil)
	if err != nil {
		t.Fatalf("helm install: %v", err)
	}
	if st := rel.(*release.Release).Info.Status; st != releasecommon.StatusDeployed {
		t.Fatalf("helm install left the release %s", st)
	}
	checkInstalled(t, c, 3)

	// A key made while installed.
	ctx := context.Background()
	if err := c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "survivor"},
		Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"orders:read"}}}); err != nil {
		t.Fatal(err)
	}

	up := action.NewUpgrade(cfg)
	up.Namespace = ns
	up.WaitStrategy = kube.HookOnlyStrategy
	up.Timeout = time.Minute
	rel, err = up.RunWithContext(ctx, "keyward", ch, map[string]any{"authn": map[string]any{"replicas": 5}})
	if err != nil {
		t.Fatalf("helm upgrade: %v", err)
	}
	if r := rel.(*release.Release); r.Info.Status != releasecommon.StatusDeployed || r.Version != 2 {
		t.Fatalf("helm upgrade: release %s, revision %d", r.Info.Status, r.Version)
	}
	checkInstalled(t, c, 5)

	un := action.NewUninstall(cfg)
	un.WaitStrategy = kube.HookOnlyStrategy
	un.Timeout = time.Minute
	if _, err := un.Run("keyward"); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "keyward-authn"}, d); !apierrors.IsNotFound(err) {
		t.Errorf("after uninstall the endpoint Deployment is still there (%v)", err)
	}
	for _, crd := range []string{"apikeys.keyward.dev", "apikeyrecords.keyward.dev", "apikeypolicies.keyward.dev"} {
		if err := c.Get(ctx, client.ObjectKey{Name: crd}, &apiextensionsv1.CustomResourceDefinition{}); err != nil {
			t.Errorf("helm uninstall did not keep CRD %s: %v", crd, err)
		}
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "survivor"}, &kw.ApiKey{}); err != nil {
		t.Errorf("the ApiKey did not survive helm uninstall: %v", err)
	}

	in = action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace = "keyward", ns, true
	in.ServerSideApply = true
	in.WaitStrategy = kube.HookOnlyStrategy
	in.Timeout = time.Minute
	if _, err := in.RunWithContext(ctx, ch, nil); err != nil {
		t.Fatalf("helm install over the kept CRDs: %v", err)
	}
	checkInstalled(t, c, 3)
}

func helmConfig(t *testing.T, kubeconfig, ns string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &ns
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, ns, "secret"); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// checkInstalled: the CRDs are established, both Deployments exist with
// valid pod templates, the admission policies are in force.
func checkInstalled(t *testing.T, c client.Client, authnReplicas int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range []string{"apikeys.keyward.dev", "apikeyrecords.keyward.dev", "apikeypolicies.keyward.dev"} {
		for {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				t.Fatalf("CRD %s: %v", name, err)
			}
			if established(crd) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("CRD %s never established", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for name, replicas := range map[string]int32{"keyward-authn": authnReplicas, "keyward-controller": 2} {
		d := &appsv1.Deployment{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, d); err != nil {
			t.Fatalf("Deployment %s: %v", name, err)
		}
		if *d.Spec.Replicas != replicas {
			t.Errorf("Deployment %s: %d replicas, want %d", name, *d.Spec.Replicas, replicas)
		}
	}
	// Only keyward writes records: the admin is refused, with the reason.
	err := c.Create(ctx, &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "forged"}})
	for i := 0; err == nil || !strings.Contains(err.Error(), "written by keyward only"); i++ {
		// A new policy is enforced once the API server has loaded it.
		if err == nil {
			_ = c.Delete(ctx, &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "forged"}})
		}
		if ctx.Err() != nil {
			t.Fatalf("the records policy is not in force: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
		err = c.Create(ctx, &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "forged"}})
	}
}

// checkFinalizerPolicy: with config/admission-finalizer, the API server
// adds keyward's finalizer to a new ApiKey, beside any other.
func checkFinalizerPolicy(t *testing.T, c client.Client) {
	t.Helper()
	// Until the API server has loaded the CRD's schema for the policy, it
	// refuses new ApiKeys (503): the reason it is not in config/default.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var key *kw.ApiKey
	for {
		// A new policy (and a new kind, for the client) is in force once
		// the API server has loaded it: retry until then.
		key = &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "default", GenerateName: "finalized-",
			Finalizers: []string{"example.com/other"}}, Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"orders:read"}}}
		err := c.Create(ctx, key)
		if err == nil && slices.Contains(key.Finalizers, kw.Finalizer) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("a new ApiKey never got the finalizer: %v %v", key.Finalizers, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !slices.Contains(key.Finalizers, "example.com/other") {
		t.Errorf("the finalizer policy dropped another finalizer: %v", key.Finalizers)
	}
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}
