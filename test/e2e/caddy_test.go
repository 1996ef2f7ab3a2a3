package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/keys"
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

// endpointKnows waits until keyward dev's endpoint knows each token: a key
// is Active once its record is written, and the endpoint learns of the
// record by its watch a moment later (longer on a loaded machine). The
// probe asks for a scope no sample key holds, so it is refused with 403
// before the key's limits are consulted: it takes nothing from a bucket.
func (s *system) endpointKnows(t *testing.T, tokens ...string) {
	t.Helper()
	s.replicaKnows(t, "127.0.0.1:8180", tokens...)
}

// replicaKnows is endpointKnows for the endpoint at addr. Each token's
// probe counts once, as a denial (insufficient_scope), in its key's usage.
// When the endpoint does not learn a key in time, the test fails with what
// the cluster holds of that key ID, so the failure says which side is wrong.
func (s *system) replicaKnows(t *testing.T, addr string, tokens ...string) {
	t.Helper()
	for _, tok := range tokens {
		deadline := time.Now().Add(10 * time.Second)
		var last string
		for {
			req, _ := http.NewRequest("GET", "http://"+addr+"/authn?scope=nothing:granted", nil)
			req.Header.Set("X-Api-Key", tok)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusForbidden {
					break
				}
				last = fmt.Sprintf("%d %s", resp.StatusCode, b)
			} else {
				last = err.Error()
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 10s the endpoint at %s does not know the key; its last answer: %s\n%s\n%s",
					addr, last, s.whereIs(tok), goroutines())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// whereIs says what the cluster holds of a token's key ID: the records
// listing it, whether the token's digest is the recorded one, and their
// ApiKeys. It never says the secret.
func (s *system) whereIs(tok string) string {
	id, secret, err := keys.Parse(tok)
	if err != nil {
		return "the token does not parse: " + err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var recs kw.ApiKeyRecordList
	if err := s.c.List(ctx, &recs); err != nil {
		return "listing records: " + err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "key ID %s:", id)
	found := false
	for _, r := range recs.Items {
		for _, k := range r.Spec.Keys {
			if k.KeyID != id {
				continue
			}
			found = true
			fmt.Fprintf(&b, "\n  record %s/%s uid %s created %s rv %s revoked %v owner %v; digest matches the token: %v",
				r.Namespace, r.Name, r.UID, r.CreationTimestamp.UTC().Format(time.RFC3339), r.ResourceVersion,
				r.Spec.Revoked, r.OwnerReferences, k.Digest == keys.Digest(secret))
			var key kw.ApiKey
			if err := s.c.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: r.Name}, &key); err != nil {
				fmt.Fprintf(&b, "\n    its ApiKey: %v", err)
			} else {
				fmt.Fprintf(&b, "\n    its ApiKey: uid %s rv %s archived %v state %s keyId %s",
					key.UID, key.ResourceVersion, key.Spec.Archived, key.Status.State, key.Status.KeyID)
			}
		}
	}
	if !found {
		fmt.Fprintf(&b, " in no record of the %d in the cluster", len(recs.Items))
	}
	return b.String()
}

// goroutines are keyward dev's goroutines that touch the index, the
// reflectors feeding it or a lock, from its pprof address: whether the
// index's writers were stuck, and on what.
func goroutines() string {
	resp, err := http.Get("http://" + app.DevPprofAddr + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		return "goroutines: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var keep []string
	for _, g := range strings.Split(string(b), "\n\n") {
		if strings.Contains(g, "keyward/internal/index") || strings.Contains(g, "(*Reflector)") || strings.Contains(g, "sync.(*") {
			keep = append(keep, g)
		}
	}
	return fmt.Sprintf("goroutines on the index, the reflectors or a lock (%d):\n%s", len(keep), strings.Join(keep, "\n\n"))
}
