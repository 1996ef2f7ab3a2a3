package e2e

import (
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"keyward.dev/keyward/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files of the plugin's output")

// pluginRun is one run of `kubectl keyward ...` through the real kubectl.
type pluginRun struct {
	out, err string
	code     int
}

// normalize replaces what changes from run to run (tokens, key IDs, times,
// ages, hours) and collapses the columns' padding (not the indentation),
// for golden files. Empty hours of a chart go: which row has the calls
// depends on when the hour turned.
func normalize(s string, ids map[string]string) string {
	s = regexp.MustCompile(`kw_[A-Za-z0-9]{16}_[A-Za-z0-9]+`).ReplaceAllString(s, "<TOKEN>")
	for id, name := range ids {
		s = strings.ReplaceAll(s, id, name)
	}
	for _, r := range []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`\b[A-Za-z0-9]{16}\b`), "<KEY-ID>"},
		{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`), "<TIME>"},
		{regexp.MustCompile(`\b\d\d:00\b`), "<HH:00>"},
		{regexp.MustCompile(`\b\d+[smhd]\b`), "<AGE>"},
		{regexp.MustCompile(`127\.0\.0\.1:\d+`), "<ENDPOINT>"},
		{regexp.MustCompile(`[█░]+`), "<BAR>"},
	} {
		s = r.re.ReplaceAllString(s, r.with)
	}
	var lines []string
	padding := regexp.MustCompile(`(\S)[ \t]+`)
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if strings.TrimSpace(line) == "<HH:00>" {
			continue
		}
		indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
		lines = append(lines, indent+strings.TrimRight(padding.ReplaceAllString(line[len(indent):], "$1 "), " "))
	}
	return strings.Join(lines, "\n") + "\n"
}

// golden compares got with testdata/plugin/name.golden (-update writes it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "plugin", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./test/e2e -run Plugin -update writes it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from %s:\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

// TestKubectlPlugin: the real kubectl finds kubectl-keyward on PATH and
// runs every command against keyward dev (API server, controller and
// endpoint): create (shown once, as JSON, as a manifest for Git, refused
// for a restricted scope), list, describe with its chart, token (refused
// without the right to read Secrets), rotate, archive (refused without
// confirmation, then checked at the endpoint), audit (exit 1 on findings)
// and completion; golden output for the human forms, schema checks for
// -o json.
func TestKubectlPlugin(t *testing.T) {
	bin := buildKeyward(t)
	path := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(path, "kubectl-keyward"), "./cmd/kubectl-keyward")
	build.Dir = testenv.Root()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the plugin: %v\n%s", err, out)
	}
	s := startDev(t, bin)
	waitStates(t, s, "keyward-demo", 30*time.Second)
	ids := map[string]string{}
	run := func(stdin string, args ...string) pluginRun {
		t.Helper()
		cmd := exec.Command(filepath.Join(assets(t), "kubectl"), args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig, "PATH="+path+string(os.PathListSeparator)+os.Getenv("PATH"))
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		r := pluginRun{out: out.String(), err: errOut.String()}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
		}
		return r
	}
	ok := func(r pluginRun, what string) pluginRun {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", what, r.code, r.out, r.err)
		}
		return r
	}

	// kubectl finds the plugin.
	if r := ok(run("", "plugin", "list"), "kubectl plugin list"); !strings.Contains(r.out, "kubectl-keyward") {
		t.Fatalf("kubectl plugin list:\n%s", r.out)
	}
	for _, sub := range []string{"", "create", "list", "describe", "token", "rotate", "archive", "audit"} {
		args := []string{"keyward"}
		if sub != "" {
			args = append(args, sub)
		}
		r := ok(run("", append(args, "--help")...), "help of "+sub)
		if !strings.Contains(r.out, "Examples:") || !strings.Contains(r.out, "--namespace") {
			t.Errorf("kubectl keyward %s --help lacks examples or kubectl's flags:\n%s", sub, r.out)
		}
	}

	// create: the token and the endpoint, once.
	r := ok(run("", "keyward", "create", "feed", "-n", "keyward-demo", "--scope", "occupancy:read", "--expires-in", "90d",
		"--description", "partner feed"), "create")
	token := s.secretValue(t, "keyward-demo", "feed-apikey", "token")
	feedID := s.secretValue(t, "keyward-demo", "feed-apikey", "keyId")
	ids[feedID] = "<FEED-ID>"
	if !strings.Contains(r.out, token) || !strings.Contains(r.err, "waiting for keyward") {
		t.Fatalf("create shows no token or no progress:\n%s\n%s", r.out, r.err)
	}
	golden(t, "create", normalize(r.out, ids))

	// create -o json, for scripts.
	r = ok(run("", "keyward", "create", "ci", "-n", "keyward-demo", "--scope", "occupancy:read", "-o", "json"), "create -o json")
	var created map[string]any
	if err := json.Unmarshal([]byte(r.out), &created); err != nil {
		t.Fatalf("create -o json: %v\n%s", err, r.out)
	}
	ids[created["keyId"].(string)] = "<CI-ID>"
	for field, re := range map[string]string{"namespace": `^keyward-demo$`, "name": `^ci$`, "keyId": `^[A-Za-z0-9]{16}$`,
		"token": `^kw_[A-Za-z0-9]{16}_[A-Za-z0-9]+$`, "endpoint": `^http://127\.0\.0\.1:8180$`, "secretName": `^ci-apikey$`} {
		if v, _ := created[field].(string); !regexp.MustCompile(re).MatchString(v) {
			t.Errorf("create -o json: %s = %q, want %s", field, v, re)
		}
	}
	if sc, _ := created["scopes"].([]any); len(sc) != 1 || sc[0] != "occupancy:read" {
		t.Errorf("create -o json: scopes %v", created["scopes"])
	}

	// --dry-run=client -o yaml: the manifest, for Git; nothing created.
	r = ok(run("", "keyward", "create", "gitops", "-n", "keyward-demo", "--scope", "occupancy:read", "--rotate-every", "90d",
		"--grace", "24h", "--dry-run=client", "-o", "yaml"), "create --dry-run")
	golden(t, "create-dry-run", normalize(r.out, ids))
	if out, _ := s.kubectl(t, nil, "-n", "keyward-demo", "get", "apikey", "gitops"); !strings.Contains(out, "NotFound") {
		t.Errorf("--dry-run=client created the ApiKey: %s", out)
	}

	// A restricted scope: the API server's refusal, as it said it.
	r = run("", "keyward", "create", "robot", "-n", "default", "--scope", "devices:write")
	if r.code != 1 || !strings.Contains(r.err, "the API server refused the ApiKey") || !strings.Contains(r.err, "restricted") {
		t.Errorf("restricted scope: exit %d\n%s", r.code, r.err)
	}
	// Bad input: a clear error, exit 1.
	r = run("", "keyward", "create", "bad", "-n", "keyward-demo", "--scope", "a", "--expires-in", "soon")
	if r.code != 1 || !strings.Contains(r.err, `"soon" is not a duration`) {
		t.Errorf("bad --expires-in: exit %d\n%s", r.code, r.err)
	}

	// Calls, for the usage figures and the chart.
	for i := range 12 {
		url := "http://127.0.0.1:8180/authn"
		if i%4 == 3 {
			url += "?scope=devices:write" // a scope it lacks: a denial of this key
		}
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Api-Key", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	var usage string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("usage of feed: %s", usage)
		}
	})
	eventually(t, 30*time.Second, "usage of the new key", func() bool {
		usage = s.mustKubectl(t, "-n", "keyward-demo", "get", "apikey", "feed", "-o", "jsonpath={.status.usage.last24h}/{.status.usage.denied24h}")
		return usage == "9/3"
	})

	// list, list -A -o json.
	r = ok(run("", "keyward", "list", "-n", "keyward-demo", "--sort-by", "calls"), "list")
	if first := strings.Fields(strings.Split(r.out, "\n")[1]); first[0] != "feed" {
		t.Errorf("--sort-by calls: first %v", first)
	}
	golden(t, "list", normalize(r.out, ids))
	r = ok(run("", "keyward", "get", "-A", "-o", "json"), "list -A -o json")
	var list struct {
		Kind  string
		Items []struct {
			Kind, APIVersion string
			Metadata         struct{ Name, Namespace string }
			Status           struct {
				KeyID string `json:"keyId"`
				Usage struct{ Last24h int64 }
			}
		}
	}
	if err := json.Unmarshal([]byte(r.out), &list); err != nil || list.Kind != "List" || len(list.Items) < 5 {
		t.Fatalf("list -A -o json: %v\n%s", err, r.out)
	}
	for _, it := range list.Items {
		if it.Kind != "ApiKey" || it.APIVersion != "keyward.dev/v1alpha1" || it.Metadata.Namespace == "" {
			t.Errorf("list -o json item %+v", it)
		}
	}

	// describe, with its chart.
	r = ok(run("", "keyward", "describe", "feed", "-n", "keyward-demo"), "describe")
	if !strings.Contains(r.out, "9 allowed, 3 denied") || !strings.Contains(r.out, "█") {
		t.Errorf("describe lacks the usage or the chart:\n%s", r.out)
	}
	golden(t, "describe", normalize(r.out, ids))

	// token: as the admin; as a reader who may not read Secrets.
	if r = ok(run("", "keyward", "token", "feed", "-n", "keyward-demo"), "token"); strings.TrimSpace(r.out) != token {
		t.Errorf("token printed %q", r.out)
	}
	s.mustKubectl(t, "-n", "keyward-demo", "create", "rolebinding", "vera-view", "--clusterrole=view", "--user=vera")
	r = run("", "keyward", "token", "feed", "-n", "keyward-demo", "--as=vera")
	if r.code != 1 || !strings.Contains(r.err, "you may not read Secret feed-apikey") || strings.Contains(r.out+r.err, token) {
		t.Errorf("token without the right to read Secrets: exit %d\n%s%s", r.code, r.out, r.err)
	}
	r = run("", "keyward", "token", "nosuch", "-n", "keyward-demo")
	if r.code != 1 || !strings.Contains(r.err, `no ApiKey "nosuch" in namespace keyward-demo`) {
		t.Errorf("token of an unknown key: exit %d\n%s", r.code, r.err)
	}

	// rotate --wait: the new key, and when the previous one stops.
	r = ok(run("", "keyward", "rotate", "feed", "-n", "keyward-demo", "--grace", "1h", "--wait"), "rotate")
	newID := s.secretValue(t, "keyward-demo", "feed-apikey", "keyId")
	ids[newID] = "<FEED-ID-2>"
	if newID == feedID || !strings.Contains(r.out, newID) || !strings.Contains(r.out, "The previous key "+feedID+" works until") {
		t.Errorf("rotate:\n%s", r.out)
	}
	golden(t, "rotate", normalize(r.out, ids))

	// audit: findings, exit 1; as JSON.
	r = run("", "keyward", "audit", "-n", "keyward-demo")
	if r.code != 1 {
		t.Errorf("audit with findings: exit %d\n%s%s", r.code, r.out, r.err)
	}
	for _, want := range []string{"feed previous-key-valid", "ci never-used", "ops-robot restricted-scope"} {
		if !strings.Contains(normalize(r.out, nil), want) {
			t.Errorf("audit lacks %q:\n%s", want, r.out)
		}
	}
	golden(t, "audit", normalize(r.out, ids))
	r = run("", "keyward", "audit", "-n", "keyward-demo", "-o", "json", "--unused-for", "1h", "--expiring-within", "100d")
	var findings []struct{ Namespace, Name, Finding, Detail string }
	if err := json.Unmarshal([]byte(r.out), &findings); err != nil || r.code != 1 {
		t.Fatalf("audit -o json: exit %d, %v\n%s", r.code, err, r.out)
	}
	kinds := map[string]bool{}
	for _, f := range findings {
		kinds[f.Finding] = true
		if f.Namespace != "keyward-demo" || f.Name == "" || f.Detail == "" {
			t.Errorf("audit -o json finding %+v", f)
		}
	}
	if !kinds["expiring"] || !kinds["never-used"] || !kinds["previous-key-valid"] {
		t.Errorf("audit -o json findings %v", kinds)
	}
	if r = run("", "keyward", "audit", "-n", "default"); r.code != 0 || !strings.Contains(r.out, "No findings") {
		t.Errorf("audit without findings: exit %d\n%s", r.code, r.out)
	}

	// archive: not without confirmation; then for good, checked.
	r = run("n\n", "keyward", "archive", "feed", "-n", "keyward-demo")
	if r.code != 1 || !strings.Contains(r.out, "9 calls allowed and 3 denied in the last 24 hours") || !strings.Contains(r.err, "not archived") {
		t.Errorf("archive answered no: exit %d\n%s%s", r.code, r.out, r.err)
	}
	r = ok(run("", "keyward", "archive", "feed", "-n", "keyward-demo", "--yes"), "archive --yes")
	if !strings.Contains(r.out, "Checked: http://127.0.0.1:8180 answers 401") {
		t.Errorf("archive did not check the key is refused:\n%s", r.out)
	}
	golden(t, "archive", normalize(r.out, ids))
	r = run("", "keyward", "archive", "nosuch", "-n", "keyward-demo", "--yes")
	if r.code != 1 || !strings.Contains(r.err, `no ApiKey "nosuch"`) {
		t.Errorf("archive of an unknown key: exit %d\n%s", r.code, r.err)
	}

	// Completion: key names.
	comp := exec.Command(filepath.Join(path, "kubectl-keyward"), "__complete", "describe", "-n", "keyward-demo", "")
	comp.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	out, err := comp.Output()
	if err != nil || !strings.Contains(string(out), "feed\n") || !strings.Contains(string(out), "ci\n") {
		t.Errorf("completion of key names: %v\n%s", err, out)
	}
}
