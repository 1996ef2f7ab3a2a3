package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
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
)

// nginxConf puts nginx with auth_request in front of an upstream: /api/
// needs any valid key, /occupancy/ the scope occupancy:read, /devices/ the
// scope devices:write. Denials answer with keyward's reason.
const nginxConf = `
worker_processes 1;
error_log {{dir}}/error.log warn;
pid {{dir}}/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path {{dir}}/body; proxy_temp_path {{dir}}/proxy;
  fastcgi_temp_path {{dir}}/fastcgi; uwsgi_temp_path {{dir}}/uwsgi; scgi_temp_path {{dir}}/scgi;

  upstream keyward { {{keyward}} keepalive 16; }

  server {
    listen {{listen}};

    location = /_keyward {
      internal;
      proxy_pass http://keyward/authn?scope=$keyward_scope;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }

    location @denied401 { default_type application/json; return 401 '{"allowed":false,"reason":"$keyward_reason"}'; }
    location @denied403 { default_type application/json; return 403 '{"allowed":false,"reason":"$keyward_reason"}'; }

    # $keyward_scope is set per location (a server-level set would run again
    # in the auth subrequest and reset it).
    auth_request /_keyward;
    auth_request_set $keyward_reason $upstream_http_x_keyward_reason;
    auth_request_set $keyward_key_id $upstream_http_x_keyward_key_id;
    auth_request_set $keyward_key $upstream_http_x_keyward_key;
    auth_request_set $keyward_scopes $upstream_http_x_keyward_scopes;
    error_page 401 = @denied401;
    error_page 403 = @denied403;
    proxy_set_header X-Keyward-Key-Id $keyward_key_id;
    proxy_set_header X-Keyward-Key $keyward_key;
    proxy_set_header X-Keyward-Scopes $keyward_scopes;

    location /api/       { set $keyward_scope ""; proxy_pass {{upstream}}; }
    location /occupancy/ { set $keyward_scope occupancy:read; proxy_pass {{upstream}}; }
    location /devices/   { set $keyward_scope devices:write; proxy_pass {{upstream}}; }
  }
}
`

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
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	conf := strings.NewReplacer("{{dir}}", dir, "{{listen}}", addr, "{{upstream}}", upstream, "{{keyward}}", servers).Replace(nginxConf)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginxBinary(t), "-p", dir, "-c", path, "-g", "daemon off;")
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
			t.Logf("nginx said: %s\n%s", out, log)
		}
	})
	eventually(t, 10*time.Second, "nginx to listen", func() bool {
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
		_ = json.NewEncoder(w).Encode(map[string]string{
			"upstream": "yes",
			"keyId":    r.Header.Get("X-Keyward-Key-Id"),
			"key":      r.Header.Get("X-Keyward-Key"),
			"scopes":   r.Header.Get("X-Keyward-Scopes"),
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
