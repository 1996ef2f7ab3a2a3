package tenancy

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"keyward.dev/keyward/internal/app"
)

// Metrics and usage name every tenant's key IDs: they answer only a token
// the API server authenticates, of someone allowed to get the path, and
// only over TLS.
func TestMetricsAndUsageAnswerOnlyAuthorizedCallers(t *testing.T) {
	ctx := context.Background()
	// A ServiceAccount with no role at all: authenticated, not authorized.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "stranger", Namespace: app.Namespace}}
	if err := admin.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	stranger, err := app.ServiceAccountConfig(ctx, cfg, sa.Name)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // self-signed
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(url, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	endpointMetrics, endpointUsage := "https://"+authnMetrics+"/metrics", "https://"+authnMetrics+"/usage"
	controllerMetrics := "https://" + ctrlMetrics + "/metrics"
	for _, tc := range []struct {
		who, url, token string
		code            int
		says            string
	}{
		{"no token", endpointMetrics, "", 401, ""},
		{"no token", endpointUsage, "", 401, ""},
		{"no token", controllerMetrics, "", 401, ""},
		{"a token the API server does not know", endpointMetrics, "kw_not_a_token", 401, ""},
		{"a token without the role", endpointMetrics, stranger.BearerToken, 403, ""},
		{"a token without the role", endpointUsage, stranger.BearerToken, 403, ""},
		{"a token without the role", controllerMetrics, stranger.BearerToken, 403, ""},
		{"the reader", endpointMetrics, readerToken, 200, "keyward_authn_decisions_total"},
		{"the reader", controllerMetrics, readerToken, 200, "controller_runtime_"},
		// Prometheus has no use for usage; only the controller collects it.
		{"the reader", endpointUsage, readerToken, 403, ""},
		{"the controller", endpointUsage, controllerToken, 200, `"replica"`},
	} {
		code, body := get(tc.url, tc.token)
		if code != tc.code || !strings.Contains(body, tc.says) {
			t.Errorf("%s, GET %s: %d %.200q; want %d with %q", tc.who, tc.url, code, body, tc.code, tc.says)
		}
	}
	// Plain HTTP is not served.
	if resp, err := http.Get("http://" + authnMetrics + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("the endpoint's metrics answer plain HTTP")
		}
	}
}
