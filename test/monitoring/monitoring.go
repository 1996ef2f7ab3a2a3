package monitoring

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"keyward.dev/keyward/internal/testenv"
)

// DashboardQueries are the PromQL expressions of config/grafana/dashboard.json.
func DashboardQueries(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "grafana", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

var metricName = regexp.MustCompile(`\b(keyward_[a-z_]+|controller_runtime_[a-z_]+|kube_[a-z_]+)\b`)

// NamedMetrics are the metric names the alerts and the dashboard use.
func NamedMetrics(t testing.TB) map[string]bool {
	t.Helper()
	rules, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "prometheus", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, text := range append(DashboardQueries(t), string(rules)) {
		for _, m := range metricName.FindAllString(text, -1) {
			names[m] = true
		}
	}
	return names
}
