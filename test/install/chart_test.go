// Package install tests the two install paths, kubectl apply -k
// config/default and the Helm chart (charts/keyward, Helm v4 as a Go
// module): the chart lints, renders the same objects as config/default,
// and both are accepted in one go by a fresh API server.
package install

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"keyward.dev/keyward/internal/testenv"
)

const namespace = "keyward-system"

var chartDir = filepath.Join(testenv.Root(), "charts", "keyward")

// Labels and annotations only Helm sets: the chart's objects are
// config/default's plus these.
var helmOnly = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
	"app.kubernetes.io/version", "helm.sh/resource-policy"}

func TestChartLints(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"defaults": nil,
		"everything on": {"metrics": map[string]any{
			"serviceMonitor":   map[string]any{"enabled": true},
			"prometheusRule":   map[string]any{"enabled": true},
			"grafanaDashboard": map[string]any{"enabled": true},
		}},
	} {
		l := lint.RunAll(chartDir, vals, namespace)
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint (%s): %s", name, m)
			}
		}
	}
}

// With its defaults the chart installs what kubectl apply -k config/default
// does (but the Namespace: helm install --create-namespace), object by
// object and field by field, so the two cannot drift.
func TestChartMatchesConfigDefault(t *testing.T) {
	chartObjs := byKey(t, render(t, nil))
	configObjs := byKey(t, kustomize(t, "config/default"))
	delete(configObjs, "v1/Namespace//"+namespace)
	compare(t, chartObjs, configObjs)
}

// The chart's monitoring objects are config/prometheus's (ServiceMonitor,
// its reader binding, the PrometheusRule), and the dashboard is
// config/grafana's.
func TestChartMonitoringMatchesConfig(t *testing.T) {
	plain := byKey(t, render(t, nil))
	all := byKey(t, render(t, map[string]any{"metrics": map[string]any{
		"serviceMonitor":   map[string]any{"enabled": true},
		"prometheusRule":   map[string]any{"enabled": true},
		"grafanaDashboard": map[string]any{"enabled": true},
	}}))
	extra := map[string]*unstructured.Unstructured{}
	for k, o := range all {
		if _, ok := plain[k]; !ok {
			extra[k] = o
		}
	}
	dash, ok := extra["v1/ConfigMap/"+namespace+"/keyward-dashboard"]
	if !ok {
		t.Fatalf("no dashboard ConfigMap among %v", keys(extra))
	}
	delete(extra, "v1/ConfigMap/"+namespace+"/keyward-dashboard")
	want, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "grafana", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := unstructured.NestedString(dash.Object, "data", "keyward.json"); got != string(want) {
		t.Errorf("the chart's dashboard is not config/grafana/dashboard.json")
	}
	compare(t, extra, byKey(t, kustomize(t, "config/prometheus")))
}

// finalizerPolicy=true adds what config/admission-finalizer holds, on a
// cluster that has MutatingAdmissionPolicy (1.36+), and nothing on an older
// one (the controller adds the finalizer there).
func TestChartFinalizerPolicy(t *testing.T) {
	on := map[string]any{"finalizerPolicy": true}
	plain := byKey(t, render(t, nil))
	extra := map[string]*unstructured.Unstructured{}
	for k, o := range byKey(t, render(t, on)) {
		if _, ok := plain[k]; !ok {
			extra[k] = o
		}
	}
	compare(t, extra, byKey(t, kustomize(t, "config/admission-finalizer")))
	old := byKey(t, renderFor(t, on, &common.KubeVersion{Version: "v1.35.0", Major: "1", Minor: "35"}, nil))
	if len(old) != len(plain) {
		t.Errorf("on 1.35 with finalizerPolicy the chart renders %d objects, without it %d", len(old), len(plain))
	}
}

// The values a platform team sets reach the objects.
func TestChartValues(t *testing.T) {
	objs := byKey(t, render(t, map[string]any{
		"image":          map[string]any{"repository": "registry.example/keyward", "digest": "sha256:" + strings.Repeat("a", 64)},
		"endpointURL":    "https://gw.example.org",
		"allowQueryKeys": false,
		"perKeyMetrics":  false,
		"defaultPolicy":  false,
		"crds":           map[string]any{"install": false},
		"authn":          map[string]any{"replicas": 5, "extraArgs": []any{"--max-staleness=2m"}},
		"networkPolicy":  map[string]any{"enabled": false},
	}))
	authn := objs["apps/v1/Deployment/"+namespace+"/keyward-authn"]
	ctrl := objs["apps/v1/Deployment/"+namespace+"/keyward-controller"]
	if authn == nil || ctrl == nil {
		t.Fatalf("Deployments missing: %v", keys(objs))
	}
	if n, _, _ := unstructured.NestedFieldNoCopy(authn.Object, "spec", "replicas"); fmt.Sprint(n) != "5" {
		t.Errorf("authn replicas %v, want 5", n)
	}
	for _, c := range []struct {
		d    *unstructured.Unstructured
		want []string
	}{
		{authn, []string{"--allow-query-keys=false", "--per-key-metrics=false", "--max-staleness=2m"}},
		{ctrl, []string{"--endpoint-url=https://gw.example.org", "--default-policy=false", "--usage-service=keyward-system/keyward-authn-metrics"}},
	} {
		containers, _, _ := unstructured.NestedSlice(c.d.Object, "spec", "template", "spec", "containers")
		cont := containers[0].(map[string]any)
		if img := cont["image"]; img != "registry.example/keyward@sha256:"+strings.Repeat("a", 64) {
			t.Errorf("%s image %v", c.d.GetName(), img)
		}
		args := fmt.Sprint(cont["args"])
		for _, w := range c.want {
			if !strings.Contains(args, w) {
				t.Errorf("%s args %s lack %s", c.d.GetName(), args, w)
			}
		}
	}
	for k := range objs {
		if strings.Contains(k, "CustomResourceDefinition") || strings.Contains(k, "NetworkPolicy") {
			t.Errorf("%s rendered although turned off", k)
		}
	}
	// The CRDs carry helm.sh/resource-policy: keep unless crds.keep=false.
	for _, keep := range []bool{true, false} {
		for k, o := range byKey(t, render(t, map[string]any{"crds": map[string]any{"keep": keep}})) {
			if strings.Contains(k, "CustomResourceDefinition") && (o.GetAnnotations()["helm.sh/resource-policy"] == "keep") != keep {
				t.Errorf("crds.keep=%v: %s has annotations %v", keep, k, o.GetAnnotations())
			}
		}
	}
}

// mapAPI is what a cluster with MutatingAdmissionPolicy (1.36+) lists.
const mapAPI = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"

// render is helm template: the chart with vals, client side, for a cluster
// of the control plane's version (helm template --api-versions for what
// client-side rendering cannot discover).
func render(t *testing.T, vals map[string]any) []*unstructured.Unstructured {
	t.Helper()
	return renderFor(t, vals, controlPlaneVersion(t), common.VersionSet{mapAPI})
}

func renderFor(t *testing.T, vals map[string]any, kube *common.KubeVersion, apis common.VersionSet) []*unstructured.Unstructured {
	t.Helper()
	ch := loadChart(t)
	in := action.NewInstall(action.NewConfiguration())
	in.DryRunStrategy = action.DryRunClient
	in.Replace = true
	in.ReleaseName = "keyward"
	in.Namespace = namespace
	in.KubeVersion = kube
	in.APIVersions = apis
	rel, err := in.Run(ch, vals)
	if err != nil {
		t.Fatalf("render the chart: %v", err)
	}
	return decode(t, []byte(rel.(*release.Release).Manifest))
}

// controlPlaneVersion is the Kubernetes version the tests' API server is
// built from (hack/controlplane/go.mod), for client-side rendering.
func controlPlaneVersion(t *testing.T) *common.KubeVersion {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.Root(), "hack", "controlplane", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			v, err := common.ParseKubeVersion(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatal("no k8s.io/kubernetes in hack/controlplane/go.mod")
	return nil
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// kustomize is kubectl kustomize (the real kubectl of the control plane).
func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command(kubectlPath(t), "kustomize", filepath.Join(testenv.Root(), dir))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return decode(t, out)
}

func kubectlPath(t *testing.T) string {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(testenv.Root(), "bin", "controlplane")
	}
	p := filepath.Join(assets, "kubectl")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no kubectl in %s: run 'make controlplane' (or 'make test')", assets)
	}
	return p
}

func decode(t *testing.T, manifest []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if err.Error() == "EOF" {
				return out
			}
			t.Fatalf("decode: %v", err)
		}
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
}

// clusterScoped are the kinds without a namespace that config/default
// holds. kubectl's kustomize does not know the admission policies are
// cluster-scoped and gives them the kustomization's namespace, which the
// API server ignores (the install test shows both are accepted).
var clusterScoped = map[string]bool{"Namespace": true, "CustomResourceDefinition": true, "ClusterRole": true,
	"ClusterRoleBinding": true, "ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true,
	"MutatingAdmissionPolicy": true, "MutatingAdmissionPolicyBinding": true}

func key(o *unstructured.Unstructured) string {
	if clusterScoped[o.GetKind()] {
		o.SetNamespace("")
	}
	return o.GetAPIVersion() + "/" + o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
}

func byKey(t *testing.T, objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	t.Helper()
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if _, dup := m[key(o)]; dup {
			t.Errorf("%s twice", key(o))
		}
		m[key(o)] = o
	}
	return m
}

func keys(m map[string]*unstructured.Unstructured) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// compare reports every object one side has and the other lacks, and every
// field that differs, after removing what only Helm sets.
func compare(t *testing.T, chartObjs, configObjs map[string]*unstructured.Unstructured) {
	t.Helper()
	for _, k := range keys(configObjs) {
		c, ok := chartObjs[k]
		if !ok {
			t.Errorf("the chart lacks %s", k)
			continue
		}
		got, want := normalize(c), normalize(configObjs[k])
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s differs (-config +chart):\n%s", k, d)
		}
	}
	for _, k := range keys(chartObjs) {
		if _, ok := configObjs[k]; !ok {
			t.Errorf("the chart has %s, config does not", k)
		}
	}
}

func normalize(o *unstructured.Unstructured) map[string]any {
	o = o.DeepCopy()
	for _, field := range []string{"labels", "annotations"} {
		m, _, _ := unstructured.NestedStringMap(o.Object, "metadata", field)
		for _, k := range helmOnly {
			delete(m, k)
		}
		if len(m) == 0 {
			unstructured.RemoveNestedField(o.Object, "metadata", field)
		} else {
			_ = unstructured.SetNestedStringMap(o.Object, m, "metadata", field)
		}
	}
	// Numbers as JSON has them, whichever decoder read them.
	b, _ := json.Marshal(o.Object)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// The chart's notes carry the Argo CD health check as docs/argocd has it
// (which controllers/kstatus_test.go runs), ready to paste into argocd-cm.
func TestChartNotesCarryTheArgoCDHealthCheck(t *testing.T) {
	ch := loadChart(t)
	in := action.NewInstall(action.NewConfiguration())
	in.DryRunStrategy, in.Replace, in.ReleaseName, in.Namespace = action.DryRunClient, true, "keyward", namespace
	in.KubeVersion = controlPlaneVersion(t)
	rel, err := in.Run(ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	notes := rel.(*release.Release).Info.Notes
	lua, err := os.ReadFile(filepath.Join(testenv.Root(), "docs", "argocd", "apikey-health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	var indented []string
	for _, l := range strings.Split(strings.TrimRight(string(lua), "\n"), "\n") {
		indented = append(indented, "      "+l)
	}
	if !strings.Contains(notes, "resource.customizations.health.keyward.dev_ApiKey: |\n"+strings.Join(indented, "\n")) {
		t.Errorf("the notes lack the health check:\n%s", notes)
	}
}

// Values the chart cannot use are refused by its schema, with a message
// that names the value, before anything reaches a cluster.
func TestChartRefusesBadValues(t *testing.T) {
	for name, c := range map[string]struct {
		vals map[string]any
		says string
	}{
		"replicas as words":     {map[string]any{"authn": map[string]any{"replicas": "three"}}, "replicas"},
		"a misspelt value":      {map[string]any{"endpointUrl": "https://x"}, "endpointUrl"},
		"a tag as digest":       {map[string]any{"image": map[string]any{"digest": "v1.2.3"}}, "digest"},
		"a URL without scheme":  {map[string]any{"endpointURL": "api.example.com"}, "endpointURL"},
		"a flag without dashes": {map[string]any{"controller": map[string]any{"extraArgs": []any{"leader-elect"}}}, "extraArgs"},
	} {
		ch := loadChart(t)
		in := action.NewInstall(action.NewConfiguration())
		in.DryRunStrategy, in.Replace, in.ReleaseName, in.Namespace = action.DryRunClient, true, "keyward", namespace
		in.KubeVersion = controlPlaneVersion(t)
		_, err := in.Run(ch, c.vals)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: want a refusal naming %s, got %v", name, c.says, err)
		}
	}
}
