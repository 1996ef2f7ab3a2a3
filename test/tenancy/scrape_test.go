package tenancy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/test/monitoring"
)

// External are the metrics the alerts read from kube-state-metrics, not
// from keyward.
var external = map[string]bool{"kube_deployment_status_replicas_ready": true, "kube_deployment_spec_replicas": true}

// Every metric the alerts and the dashboard name exists in a scrape of the
// running controller and endpoint (as Prometheus would get it, with the
// reader's token), after a key with an expiry was issued, checked and its
// usage collected.
func TestAlertsAndDashboardNameRealMetrics(t *testing.T) {
	ctx := context.Background()
	ns := "scrape"
	tenant(t, ns, nil, "scrape-admin", "admin")
	c := as(t, "scrape-admin")
	expires := metav1.NewTime(time.Now().Add(72 * time.Hour))
	must(t, c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "expiring"},
		Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"payments:read"}, ExpiresAt: &expires}}))
	_, token := awaitKey(t, c, ns, "expiring")
	check(t, token)
	check(t, "kw_bogus")

	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // self-signed
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	scrape := func() map[string]bool {
		have := map[string]bool{}
		for _, addr := range []string{authnMetrics, ctrlMetrics} {
			req, _ := http.NewRequest("GET", "https://"+addr+"/metrics", nil)
			req.Header.Set("Authorization", "Bearer "+readerToken)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("scrape %s: %d", addr, resp.StatusCode)
			}
			for _, line := range strings.Split(string(body), "\n") {
				if line == "" || line[0] == '#' {
					continue
				}
				name, _, _ := strings.Cut(line, "{")
				name, _, _ = strings.Cut(name, " ")
				have[name] = true
			}
		}
		return have
	}
	named := monitoring.NamedMetrics(t)
	missing := func(have map[string]bool) []string {
		var out []string
		for n := range named {
			if !have[n] && !external[n] {
				out = append(out, n)
			}
		}
		sort.Strings(out)
		return out
	}
	if len(named) < 10 {
		t.Fatalf("only %d metrics named: %v", len(named), named)
	}
	eventually(t, 20*time.Second, "every metric the alerts and dashboard name", func() (bool, string) {
		m := missing(scrape())
		return len(m) == 0, fmt.Sprint("missing: ", m)
	})
	// A name nobody exports is caught.
	if m := missing(map[string]bool{}); len(m) == 0 {
		t.Fatal("an empty scrape misses nothing: the check cannot fail")
	}
	must(t, c.Delete(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "expiring"}}))
}
