// Package monitoring checks the alerts (config/prometheus/rules.yaml) and
// the Grafana dashboard (config/grafana/dashboard.json) with promtool, the
// rule checker of the Prometheus Go module (make builds it into bin/).
// That every metric they name exists is checked against a scrape of the
// running system in test/tenancy (TestAlertsAndDashboardNameRealMetrics).
package monitoring

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"

	"keyward.dev/keyward/internal/testenv"
)

func promtool(t *testing.T) string {
	t.Helper()
	p := os.Getenv("PROMTOOL")
	if p == "" {
		p = filepath.Join(testenv.Root(), "bin", "promtool")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no promtool at %s: run 'make promtool' (or 'make test')", p)
	}
	return p
}

// check runs promtool check rules on a rule file with the given groups.
func check(t *testing.T, groups any) string {
	t.Helper()
	data, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool(t), "check", "rules", "--lint=all", "--lint-fatal", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s\n%s", err, out, data)
	}
	return string(out)
}

// The PrometheusRule's groups pass promtool check rules (with every lint).
func TestAlertsPassPromtool(t *testing.T) {
	var rule struct {
		APIVersion string         `json:"apiVersion"`
		Kind       string         `json:"kind"`
		Metadata   map[string]any `json:"metadata"`
		Spec       struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	data, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "prometheus", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &rule); err != nil || rule.Kind != "PrometheusRule" || rule.APIVersion != "monitoring.coreos.com/v1" {
		t.Fatalf("rules.yaml: %v (kind %q)", err, rule.Kind)
	}
	out := check(t, rule.Spec.Groups)
	var alerts []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g["rules"].([]any) {
			alerts = append(alerts, r.(map[string]any)["alert"].(string))
		}
	}
	for _, want := range []string{"KeywardAuthnReplicasNotReady", "KeywardAuthnIndexStale", "KeywardDenialRatioJump",
		"KeywardApiKeyExpiringSoon", "KeywardUsageCollectionFailing", "KeywardReconcileErrors"} {
		if !strings.Contains(strings.Join(alerts, " "), want) {
			t.Errorf("no alert %s among %v", want, alerts)
		}
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool did not say SUCCESS:\n%s", out)
	}
}

// A broken expression is refused, so the check above can fail.
func TestPromtoolRefusesABrokenRule(t *testing.T) {
	data, _ := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "x",
		"rules": []any{map[string]any{"alert": "Broken", "expr": "sum(rate(keyward_authn_decisions_total[5m])"}}}}})
	file := filepath.Join(t.TempDir(), "rules.yaml")
	_ = os.WriteFile(file, data, 0o644)
	if out, err := exec.Command(promtool(t), "check", "rules", file).CombinedOutput(); err == nil {
		t.Fatalf("promtool accepted a broken expression:\n%s", out)
	}
}

// Every query of the dashboard parses: each becomes a recording rule that
// promtool checks, with Grafana's variables given values.
func TestDashboardQueriesPassPromtool(t *testing.T) {
	exprs := DashboardQueries(t)
	if len(exprs) < 10 {
		t.Fatalf("only %d queries in the dashboard", len(exprs))
	}
	var rules []any
	for i, e := range exprs {
		e = strings.NewReplacer("$__rate_interval", "5m", "$namespace", ".*").Replace(e)
		rules = append(rules, map[string]any{"record": "keyward:dashboard:" + string(rune('a'+i)), "expr": e})
	}
	check(t, []any{map[string]any{"name": "dashboard", "rules": rules}})
}

// The Prometheus Operator objects decode strictly into the operator's own
// Go types: no misspelt or misplaced field is silently dropped.
func TestOperatorObjectsMatchTheirTypes(t *testing.T) {
	for _, f := range []string{"monitor.yaml", "rules.yaml"} {
		data, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "prometheus", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			var meta struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var obj any
			switch meta.Kind {
			case "ServiceMonitor":
				obj = &monitoringv1.ServiceMonitor{}
			case "PrometheusRule":
				obj = &monitoringv1.PrometheusRule{}
			default:
				continue
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s: %s: %v", f, meta.Kind, err)
			}
		}
	}
	// A misplaced field is refused, so the check can fail.
	if err := yaml.UnmarshalStrict([]byte("kind: ServiceMonitor\nspec: {endpoint: []}\n"), &monitoringv1.ServiceMonitor{}); err == nil {
		t.Error("a misspelt field was accepted")
	}
}
