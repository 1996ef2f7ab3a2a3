package e2e

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"keyward.dev/keyward/internal/testenv"
)

// caddyConf is the Caddyfile of docs/gateways.md, as written there, with
// this test's addresses put in and Caddy's admin endpoint off.
func caddyConf(t *testing.T, listen, upstream string) string {
	t.Helper()
	up := strings.TrimPrefix(upstream, "http://")
	block := testenv.ReplaceOnce(t, testenv.DocBlock(t, "Caddy", "caddyfile"),
		[2]string{"forward_auth keyward-authn.keyward-system:8180", "forward_auth 127.0.0.1:8180"},
		[2]string{":80 {", "http://" + listen + " {"},
		[2]string{"reverse_proxy occupancy:8080", "reverse_proxy " + up},
		[2]string{"reverse_proxy api:8080", "reverse_proxy " + up})
	return "{\n\tadmin off\n}\n" + block
}

// startCaddy runs Debian's Caddy with the documented Caddyfile in front of
// upstream until the test ends.
func startCaddy(t *testing.T, upstream string) string {
	t.Helper()
	bin, err := exec.LookPath("caddy")
	if err != nil {
		t.Fatal("caddy is not installed: make caddy installs Debian's package")
	}
	return startGateway(t, "caddy", "Caddyfile", func(_, addr string) string { return caddyConf(t, addr, upstream) },
		func(dir, path string) *exec.Cmd {
			cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
			cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
			return cmd
		})
}

func TestCaddyGateway(t *testing.T) {
	s := startDev(t, buildKeyward(t))
	gw := startCaddy(t, startUpstream(t))
	waitStates(t, s, "keyward-demo", 30*time.Second)
	tok := s.secretValue(t, "keyward-demo", "occupancy-reader-apikey", "token")
	id := s.secretValue(t, "keyward-demo", "occupancy-reader-apikey", "keyId")
	agent := s.secretValue(t, "keyward-demo", "agent-activator-apikey", "token")
	s.endpointKnows(t, tok, agent)

	for name, tc := range map[string]struct {
		path    string
		headers []string
	}{
		"x-api-key":       {"/occupancy/floors", []string{"x-api-key", tok}},
		"bearer":          {"/occupancy/floors", []string{"Authorization", "Bearer " + tok}},
		"any valid key":   {"/api/x?a=1", []string{"x-auth-key", tok}},
		"forged identity": {"/occupancy/floors", []string{"x-api-key", tok, "X-Keyward-Key-Id", "victim0000000000", "X-Keyward-Scopes", "*", "X-Keyward-Reason", "allowed"}},
	} {
		a := call(t, gw+tc.path, tc.headers...)
		if a.code != 200 || a.body["keyId"] != id || a.body["key"] != "keyward-demo/occupancy-reader" ||
			a.body["scopes"] != "occupancy:read" || a.body["leaked"] != "" {
			t.Errorf("%s: %d %v", name, a.code, a.body)
		}
		if q, _ := a.body["query"].(string); strings.Contains(q, tok) {
			t.Errorf("%s: the key reached the upstream in the query", name)
		}
	}
	for name, tc := range map[string]struct {
		path    string
		headers []string
		code    int
		reason  string
	}{
		"no key":             {"/api/x", nil, 401, "missing_key"},
		"junk":               {"/api/x", []string{"x-api-key", "let-me-in"}, 401, "malformed_key"},
		"typo":               {"/occupancy/x", []string{"x-api-key", "kw_" + id + "_" + strings.Repeat("A", 49)}, 401, "malformed_key"},
		"missing scope":      {"/occupancy/x", []string{"x-api-key", agent}, 403, "insufficient_scope"},
		"key in the query":   {"/occupancy/x?_auth_key=" + tok, nil, 400, "malformed_request"},
		"key in the query 2": {"/api/x?a=1&%5Fapi_auth=" + tok, nil, 400, "malformed_request"},
	} {
		a := call(t, gw+tc.path, tc.headers...)
		if a.code != tc.code || a.body["reason"] != tc.reason || a.body["upstream"] != nil {
			t.Errorf("%s: %d %v, want %d %s", name, a.code, a.body, tc.code, tc.reason)
		}
	}

	// A key over its limits: Caddy's forward_auth passes keyward's 429
	// through as it came, status, body and headers (Traefik's forwardAuth
	// and Envoy's ext_authz do the same with a denial); an allowed answer's
	// RateLimit headers stay between Caddy and keyward unless copied.
	if out, err := s.kubectl(t, strings.NewReader(`apiVersion: keyward.dev/v1alpha1
kind: ApiKey
metadata: {name: slow, namespace: keyward-demo}
spec:
  scopes: [occupancy:read]
  limits: {requestsPerSecond: 1, burst: 2}
`), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	waitStates(t, s, "keyward-demo", 30*time.Second)
	slow := s.secretValue(t, "keyward-demo", "slow-apikey", "token")
	s.endpointKnows(t, slow)
	var codes []int
	var last *http.Response
	var body []byte
	for range 3 {
		req, _ := http.NewRequest("GET", gw+"/occupancy/floors", nil)
		req.Header.Set("X-Api-Key", slow)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
		last = resp
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 || !strings.Contains(string(body), `"reason":"rate_limited"`) ||
		last.Header.Get("Retry-After") != "1" || last.Header.Get("RateLimit-Policy") != `"rate";q=2;w=2` ||
		last.Header.Get("RateLimit") != `"rate";r=0;t=2` {
		t.Errorf("through Caddy: %v, then %v %s", codes, last.Header, body)
	}
}
