package tenancy

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
	// Only the registered paths reach the auth filter, which logs the path
	// of a refused caller: a path carrying a key is turned away before it,
	// so that log line can hold no key material.
	for _, path := range []string{"/metrics/" + forged(t, "abcdefghijklmnop"), "/usage/x", "/" + forged(t, "abcdefghijklmnop")} {
		if code, _ := get("https://"+authnMetrics+path, ""); code != 404 {
			t.Errorf("GET %s: %d, want 404 before any authentication", path, code)
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

// A tenant cannot give itself the metrics: the admin of a namespace may
// not bind keyward-metrics-reader (RBAC refuses to grant what one does not
// hold), and a ServiceAccount of its namespace, even one it made edit
// there, is refused by both metrics servers.
func TestTenantsCannotReadMetrics(t *testing.T) {
	ctx := context.Background()
	const ns, user = "metrics-tenant", "mallory"
	tenant(t, ns, nil, user, "admin")
	mallory := as(t, user)
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "keyward-metrics-reader"}
	me := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
	for _, o := range []client.Object{
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "metrics"}, RoleRef: ref, Subjects: me},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "mallory-metrics"}, RoleRef: ref, Subjects: me},
	} {
		if err := mallory.Create(ctx, o); !apierrors.IsForbidden(err) {
			t.Errorf("the tenant's admin binding keyward-metrics-reader (%T): %v, want Forbidden", o, err)
		}
	}
	// Its own ServiceAccount, bound to edit in its namespace by itself.
	must(t, mallory.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "scraper"}}))
	must(t, mallory.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "scraper-edit"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "scraper", Namespace: ns}}}))
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "scraper", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second} //nolint:gosec // self-signed
	for _, url := range []string{"https://" + authnMetrics + "/metrics", "https://" + authnMetrics + "/usage", "https://" + ctrlMetrics + "/metrics"} {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+tr.Status.Token)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Errorf("the tenant's ServiceAccount on %s: %d, want 403", url, resp.StatusCode)
		}
	}
}
