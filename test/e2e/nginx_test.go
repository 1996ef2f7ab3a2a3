package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/testenv"
)

// nginxConf is the nginx configuration of docs/gateways.md, as written
// there, with the addresses of this test put in and wrapped in what a
// standalone nginx needs (pid and temporary paths, an events block): the
// documented configuration is the tested one. Its locations: /api/ needs
// any valid key, /occupancy/ the scope occupancy:read, /devices/ the scope
// devices:write.
func nginxConf(t *testing.T, dir, listen, upstream, servers string) string {
	t.Helper()
	block := testenv.ReplaceOnce(t, testenv.DocBlock(t, "nginx", "nginx"),
		[2]string{"server keyward-authn.keyward-system:8180;", servers},
		[2]string{"listen 80;", "listen " + listen + ";"},
		[2]string{"/var/log/nginx/access.log", filepath.Join(dir, "access.log")},
		[2]string{"proxy_pass http://api;", "proxy_pass " + upstream + ";"},
		[2]string{"proxy_pass http://occupancy;", "proxy_pass " + upstream + ";"},
		[2]string{"proxy_pass http://devices;", "proxy_pass " + upstream + ";"})
	return fmt.Sprintf(`worker_processes 1;
error_log %[1]s/error.log warn;
pid %[1]s/nginx.pid;
events { worker_connections 256; }
http {
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi; uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
%[2]s}
`, dir, block)
}

func nginxBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("no nginx: run 'make nginx' (make test does)")
	return ""
}

// startNginx runs nginx in front of upstream until the test ends; it asks
// the auth endpoints at authn (default keyward dev's), round robin.
func startNginx(t *testing.T, upstream string, authn ...string) string {
	t.Helper()
	if len(authn) == 0 {
		authn = []string{"127.0.0.1:8180"}
	}
	servers := ""
	for _, a := range authn {
		servers += "server " + a + "; "
	}
	return startGateway(t, "nginx", "nginx.conf", func(dir, addr string) string {
		return nginxConf(t, dir, addr, upstream, servers)
	}, func(dir, path string) *exec.Cmd {
		return exec.Command(nginxBinary(t), "-p", dir, "-c", path, "-g", "daemon off;")
	})
}

// startGateway runs a gateway until the test ends: conf gives its
// configuration for its folder and a free address, written to file in that
// folder; command starts it with that file. It returns the gateway's URL
// once it listens, and shows what it said (and its error.log) if the test
// fails.
func startGateway(t *testing.T, name, file string, conf func(dir, addr string) string,
	command func(dir, path string) *exec.Cmd) string {
	t.Helper()
	dir := t.TempDir()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, file)
	if err := os.WriteFile(path, []byte(conf(dir, addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := command(dir, path)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("%s said:\n%s\n%s", name, tail(out.String(), 3000), log)
		}
	})
	eventually(t, 10*time.Second, name+" to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "http://" + addr
}

// upstream echoes the identity headers it received.
func startUpstream(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		// What must not arrive: a credential, keyward's other headers.
		var leaked []string
		for _, h := range append(authn.CredentialHeaders[:], "X-Keyward-Reason", "X-Keyward-Required-Scopes") {
			if r.Header.Get(h) != "" {
				leaked = append(leaked, h)
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]string{
			"upstream": "yes",
			"keyId":    r.Header.Get("X-Keyward-Key-Id"),
			"key":      r.Header.Get("X-Keyward-Key"),
			"scopes":   r.Header.Get("X-Keyward-Scopes"),
			"query":    r.URL.RawQuery,
			"path":     r.URL.Path,
			"leaked":   strings.Join(leaked, ","),
		})
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type answer struct {
	code int
	body map[string]any
}

func call(t *testing.T, url string, headers ...string) answer {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, body: map[string]any{}}
	if err := json.Unmarshal(b, &a.body); err != nil {
		t.Fatalf("GET %s: %d %q is not JSON", url, resp.StatusCode, b)
	}
	return a
}

func TestNginxGateway(t *testing.T) {
	s := startDev(t, buildKeyward(t))
	gw := startNginx(t, startUpstream(t))
	waitStates(t, s, "keyward-demo", 30*time.Second)
	secret := func(name, field string) string { return s.secretValue(t, "keyward-demo", name, field) }
	tok := secret("occupancy-reader-apikey", "token")
	id, sec := secret("occupancy-reader-apikey", "keyId"), secret("occupancy-reader-apikey", "secret")
	s.endpointKnows(t, tok, secret("agent-activator-apikey", "token"))
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+sec))

	t.Run("every credential form is allowed and the upstream learns who called", func(t *testing.T) {
		for name, tc := range map[string]struct {
			path    string
			headers []string
		}{
			"x-api-key":  {"/occupancy/floors", []string{"x-api-key", tok}},
			"x-auth-key": {"/occupancy/floors", []string{"X-Auth-Key", tok}},
			"x-api-auth": {"/occupancy/floors", []string{"x-api-auth", tok}},
			"bearer":     {"/occupancy/floors", []string{"Authorization", "Bearer " + tok}},
			"basic":      {"/occupancy/floors", []string{"Authorization", basic}},
			"_auth_key":  {"/occupancy/floors?_auth_key=" + tok, nil},
			"_api_auth":  {"/api/x?a=1&_api_auth=" + tok, nil},
		} {
			a := call(t, gw+tc.path, tc.headers...)
			if a.code != 200 || a.body["upstream"] != "yes" || a.body["keyId"] != id ||
				a.body["key"] != "keyward-demo/occupancy-reader" || a.body["scopes"] != "occupancy:read" {
				t.Errorf("%s: %d %v", name, a.code, a.body)
			}
		}
	})

	t.Run("the upstream gets keyward's identity, never the key or a forged identity", func(t *testing.T) {
		for name, tc := range map[string]struct {
			path, query string
			headers     []string
		}{
			"headers cleared": {"/occupancy/floors", "", []string{"x-api-key", tok, "X-Keyward-Required-Scopes", "occupancy:read",
				"X-Keyward-Reason", "allowed"}},
			"forged identity": {"/occupancy/floors", "", []string{"Authorization", "Bearer " + tok, "X-Keyward-Key-Id", "victim0000000000",
				"X-Keyward-Key", "other/victim", "X-Keyward-Scopes", "*"}},
			"query key removed":       {"/api/x", "a=1&b=2", nil},
			"encoded query key":       {"/api/x", "a=1", nil},
			"query key alone":         {"/occupancy/floors", "", nil},
			"query key in the middle": {"/api/x", "a=1&c=%20d", nil},
		} {
			target := tc.path
			switch name {
			case "query key removed":
				target += "?a=1&_auth_key=" + tok + "&b=2"
			case "encoded query key":
				target += "?a=1&%5Fapi%5Fauth=" + tok
			case "query key alone":
				target += "?_auth_key=" + tok
			case "query key in the middle":
				target += "?a=1&_api_auth=" + tok + "&c=%20d"
			}
			a := call(t, gw+target, tc.headers...)
			if a.code != 200 || a.body["keyId"] != id || a.body["key"] != "keyward-demo/occupancy-reader" ||
				a.body["scopes"] != "occupancy:read" || a.body["leaked"] != "" {
				t.Errorf("%s: %d %v", name, a.code, a.body)
			}
			if q, _ := a.body["query"].(string); strings.Contains(q, tok) || strings.Trim(q, "&") != tc.query {
				t.Errorf("%s: upstream query %q, want %q", name, q, tc.query)
			}
			if p, _ := a.body["path"].(string); p != tc.path {
				t.Errorf("%s: upstream path %q, want %q", name, p, tc.path)
			}
		}
	})

	t.Run("denials carry keyward's reason", func(t *testing.T) {
		wrong := "kw_" + id + "_" + strings.Repeat("A", 43)
		for name, tc := range map[string]struct {
			path    string
			headers []string
			code    int
			reason  string
		}{
			"no key":        {"/api/x", nil, 401, "missing_key"},
			"junk":          {"/api/x", []string{"x-api-key", "let-me-in"}, 401, "malformed_key"},
			"typo":          {"/api/x", []string{"x-api-key", wrong + "AAAAAA"}, 401, "malformed_key"},
			"two keys":      {"/api/x", []string{"x-api-key", tok, "Authorization", "Bearer other"}, 401, "ambiguous_credentials"},
			"missing scope": {"/devices/reboot", []string{"x-api-key", tok}, 403, "insufficient_scope"},
		} {
			a := call(t, gw+tc.path, tc.headers...)
			if a.code != tc.code || a.body["reason"] != tc.reason || a.body["upstream"] != nil {
				t.Errorf("%s: %d %v, want %d %s", name, a.code, a.body, tc.code, tc.reason)
			}
		}
		// The archived sample never had a key; a key of another ApiKey that
		// lacks the route's scope is refused with 403.
		agent := secret("agent-activator-apikey", "token")
		if a := call(t, gw+"/occupancy/x", "x-api-key", agent); a.code != 403 {
			t.Errorf("agent key on an occupancy route: %d %v", a.code, a.body)
		}
		full := secret("ops-robot-apikey", "token")
		if a := call(t, gw+"/devices/reboot", "x-api-key", full); a.code != 200 {
			t.Errorf("full-access key on a devices:write route: %d %v", a.code, a.body)
		}
	})

	t.Run("metrics count decisions by reason, for the banner's reader token only", func(t *testing.T) {
		// As the banner says: curl -sk -H "Authorization: Bearer $(cat <dir>/metrics-reader.token)" https://127.0.0.1:8082/metrics
		token, err := os.ReadFile(filepath.Join(s.dir, "metrics-reader.token"))
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed
		get := func(auth string) (int, []byte) {
			req, _ := http.NewRequest("GET", "https://127.0.0.1:8082/metrics", nil)
			if auth != "" {
				req.Header.Set("Authorization", "Bearer "+auth)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, b
		}
		if code, _ := get(""); code != 401 {
			t.Errorf("no token: %d, want 401", code)
		}
		code, b := get(string(token))
		if code != 200 {
			t.Fatalf("the reader's token: %d %s", code, b)
		}
		for _, want := range []string{`keyward_authn_decisions_total{reason="allowed"}`, `keyward_authn_decisions_total{reason="insufficient_scope"}`,
			"keyward_authn_decision_duration_seconds_bucket"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("kubectl patch archived turns the next requests into 401 within a second", func(t *testing.T) {
		s.mustKubectl(t, "-n", "keyward-demo", "patch", "apikey", "occupancy-reader", "--type", "merge", "-p", `{"spec":{"archived":true}}`)
		start := time.Now()
		for {
			a := call(t, gw+"/occupancy/floors", "x-api-key", tok)
			if a.code == 401 && a.body["reason"] == "archived" {
				t.Logf("401 archived %s after kubectl patch returned", time.Since(start))
				break
			}
			if time.Since(start) > time.Second {
				t.Fatalf("still %d %v a second after archiving", a.code, a.body)
			}
		}
	})
}
