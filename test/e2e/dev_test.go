// Package e2e runs the keyward binary as a person would: `keyward dev` on
// the local control plane, driven with the real kubectl.
package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/testenv"
)

var root = testenv.Root()

// system is one running `keyward dev`.
type system struct {
	cmd        *exec.Cmd
	dir        string
	kubeconfig string
	out        *testenv.Buffer
	c          client.Client
	bin        string
	exited     chan struct{}
	// seen holds the secret of every key the system issued while it ran
	// (secret → key ID), for the secret scan of the logs.
	seenMu sync.Mutex
	seen   map[string]string
}

// keywardBin is keyward built once for all the tests of the package.
var keywardBin struct {
	once sync.Once
	dir  string
	err  error
}

// buildKeyward builds keyward from the working tree, once per run of the
// package (linking it takes seconds; every test runs the same source).
func buildKeyward(t *testing.T) string {
	t.Helper()
	kb := &keywardBin
	kb.once.Do(func() {
		if kb.dir, kb.err = os.MkdirTemp("", "keyward-e2e-"); kb.err != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(kb.dir, "keyward"), "./cmd/keyward")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			kb.err = fmt.Errorf("%w\n%s", err, out)
		}
	})
	if kb.err != nil {
		t.Fatalf("build keyward: %v", kb.err)
	}
	return filepath.Join(kb.dir, "keyward")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if keywardBin.dir != "" {
		_ = os.RemoveAll(keywardBin.dir)
	}
	os.Exit(code)
}

func assets(t *testing.T) string {
	t.Helper()
	a := filepath.Join(root, "bin", "controlplane")
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"} {
		if _, err := os.Stat(filepath.Join(a, b)); err != nil {
			t.Fatalf("no %s in %s: run 'make controlplane' (make test does)", b, a)
		}
	}
	return a
}

// startDev runs `keyward dev` until the test ends, and waits until it says
// it is running.
func startDev(t *testing.T, bin string, args ...string) *system {
	t.Helper()
	s := &system{dir: t.TempDir(), out: &testenv.Buffer{}, bin: bin}
	s.kubeconfig = filepath.Join(s.dir, "kubeconfig")
	s.cmd = exec.Command(bin, append([]string{"dev", "--assets", assets(t), "--dir", s.dir, "--config", filepath.Join(root, "config"),
		// The most verbose log keyward writes, for the secret scan.
		"--zap-log-level=5",
		// Every watch client-go opens and closes, and why: a key the
		// endpoint learns late is then explained by its log.
		"--client-go-verbosity=4"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	collecting, stopCollecting := context.WithCancel(context.Background())
	collected := make(chan struct{})
	t.Cleanup(func() {
		// Every key this system issued while it ran, for the scan of every
		// log the test wrote, once it has stopped.
		stopCollecting()
		<-collected
		// Once more while the system still runs: a test may end within a
		// round of the collector after its last key appeared (seen in
		// TestRestrictedScopeWithKubectl, whose one key came last).
		s.collectSecrets()
		defer s.scanLogs(t)
		select {
		case <-s.exited:
		default:
			// Ctrl-C first: envtest starts etcd and the API server in
			// process groups of their own, so only keyward dev's own
			// shutdown stops them; SIGKILL to its group is the fallback.
			_ = s.cmd.Process.Signal(os.Interrupt)
			select {
			case <-s.exited:
			case <-time.After(30 * time.Second):
				_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
				<-s.exited
			}
		}
		if t.Failed() {
			t.Logf("keyward dev said:\n%s", s.out.String())
			if log, err := os.ReadFile(filepath.Join(s.dir, "keyward.log")); err == nil {
				// Everything but the endpoint's decisions (a probe loop
				// writes dozens a second), then the end as it was.
				var rest []string
				for _, line := range strings.Split(string(log), "\n") {
					if !strings.Contains(line, `"msg":"decision"`) {
						rest = append(rest, line)
					}
				}
				t.Logf("keyward.log without decisions (tail):\n%s", tail(strings.Join(rest, "\n"), 80000))
				t.Logf("keyward.log (tail):\n%s", tail(string(log), 4000))
			}
		}
	})
	exited := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(exited) }()
	s.exited = exited
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(s.out.String(), "keyward is running") {
		select {
		case <-exited:
			t.Fatalf("keyward dev exited:\n%s", s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("keyward dev did not come up in 90s:\n%s", s.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	s.c, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(collected)
		for {
			s.collectSecrets()
			select {
			case <-collecting.Done():
				return
			case <-s.exited:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return s
}

// collectSecrets remembers the secret part of every keyward token in any
// Secret of the cluster now, current and previous keys alike.
func (s *system) collectSecrets() {
	var list corev1.SecretList
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if s.c.List(ctx, &list) != nil {
		return
	}
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	if s.seen == nil {
		s.seen = map[string]string{}
	}
	for _, sec := range list.Items {
		for _, v := range sec.Data {
			for _, f := range strings.Fields(strings.NewReplacer(",", " ", "\"", " ").Replace(string(v))) {
				if id, secret, err := keys.Parse(f); err == nil {
					s.seen[secret] = id
				}
			}
		}
	}
}

// scanLogs fails the test when a key's secret appears in any file under
// the test's temporary folders (keyward dev's keyward.log, the
// kube-controller-manager log, nginx's logs and configuration) or in what
// keyward dev printed.
func (s *system) scanLogs(t *testing.T) {
	t.Helper()
	s.seenMu.Lock()
	secrets := s.seen
	s.seenMu.Unlock()
	if len(secrets) == 0 {
		t.Error("secret scan: no keys were collected, so the scan of the logs would prove nothing")
		return
	}
	texts := map[string]string{"keyward dev's output": s.out.String()}
	root := filepath.Dir(s.dir)
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		// Logs and configuration, not binaries (the keyward the test built
		// sits here too).
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 == 0 && info.Size() < 256<<20 {
			if b, err := os.ReadFile(path); err == nil {
				texts[path] = string(b)
			}
		}
		return nil
	})
	scanned := 0
	for name, text := range texts {
		scanned += len(text)
		for secret, id := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("secret scan: the secret of key %s is in %s", id, name)
			}
		}
	}
	if !t.Failed() {
		t.Logf("secret scan: none of %d keys' secrets in %d files, %d bytes", len(secrets), len(texts), scanned)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// kubectl runs the real kubectl against the system.
func (s *system) kubectl(t *testing.T, stdin io.Reader, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(assets(t), "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// secretValue reads one data key of a Secret with kubectl, decoded.
func (s *system) secretValue(t *testing.T, ns, name, field string) string {
	t.Helper()
	out := s.mustKubectl(t, "-n", ns, "get", "secret", name, "-o", "jsonpath={.data."+field+"}")
	b, err := base64.StdEncoding.DecodeString(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (s *system) mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.kubectl(t, nil, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// samplesIn returns the samples rewritten into namespace ns.
func samplesIn(t *testing.T, ns string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "config", "samples", "*.yaml"))
	dir := t.TempDir()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("keyward-demo"), []byte(ns))
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDevTourWithKubectl(t *testing.T) {
	bin := buildKeyward(t)
	s := startDev(t, bin)
	ctx := context.Background()

	t.Run("a second keyward dev says one is running", func(t *testing.T) {
		cmd := exec.Command(bin, "dev", "--assets", assets(t), "--dir", s.dir, "--config", filepath.Join(root, "config"))
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "keyward dev is already running (pid") {
			t.Fatalf("second keyward dev: %v\n%s", err, out)
		}
	})

	t.Run("kubectl version parses the server version", func(t *testing.T) {
		out := s.mustKubectl(t, "version")
		if !strings.Contains(out, "Server Version: v1.37") {
			t.Fatalf("kubectl version:\n%s", out)
		}
	})

	t.Run("config/default passes the API server's dry run", func(t *testing.T) {
		// keyward dev created keyward-system for its ServiceAccounts, as
		// config/default would (a dry run cannot put objects into a
		// namespace it only pretends to create).
		s.mustKubectl(t, "get", "namespace", "keyward-system")
		out := s.mustKubectl(t, "apply", "--dry-run=server", "-k", filepath.Join(root, "config", "default"))
		for _, want := range []string{"deployment.apps/keyward-controller", "deployment.apps/keyward-authn",
			"clusterrole.rbac.authorization.k8s.io/keyward-authn", "service/keyward-authn",
			"service/keyward-authn-metrics", "service/keyward-controller-metrics", "clusterrole.rbac.authorization.k8s.io/keyward-metrics-reader",
			"networkpolicy.networking.k8s.io/keyward-authn", "networkpolicy.networking.k8s.io/keyward-controller"} {
			if !strings.Contains(out, want) {
				t.Errorf("dry run does not mention %s:\n%s", want, out)
			}
		}
	})

	t.Run("the samples applied at start are live", func(t *testing.T) {
		waitStates(t, s, "keyward-demo", 30*time.Second)
		out := s.mustKubectl(t, "get", "apikeys", "-n", "keyward-demo")
		for _, col := range []string{"KEY ID", "SCOPES", "STATE", "CALLS-24H", "LAST USED", "AGE", "occupancy:read", "Archived"} {
			if !strings.Contains(out, col) {
				t.Errorf("kubectl get apikeys does not show %q:\n%s", col, out)
			}
		}
	})

	t.Run("kubectl apply of the samples gives Active keys with Secrets within 2s", func(t *testing.T) {
		dir := samplesIn(t, "e2e-apply")
		start := time.Now()
		s.mustKubectl(t, "apply", "-f", dir)
		applied := time.Since(start)
		took := waitStates(t, s, "e2e-apply", 10*time.Second)
		t.Logf("kubectl apply took %s; all keys Active with Secrets %s after it returned", applied, took)
		if took > 2*time.Second {
			t.Fatalf("keys became Active %s after kubectl apply; want at most 2s", took)
		}
	})

	t.Run("read the token, archive with kubectl patch", func(t *testing.T) {
		tok := s.mustKubectl(t, "-n", "keyward-demo", "get", "secret", "occupancy-reader-apikey", "-o", "jsonpath={.data.token}")
		if tok == "" {
			t.Fatal("no token in the Secret")
		}
		s.mustKubectl(t, "-n", "keyward-demo", "patch", "apikey", "occupancy-reader", "--type", "merge", "-p", `{"spec":{"archived":true}}`)
		eventually(t, 5*time.Second, "occupancy-reader to be Archived without a Secret", func() bool {
			out, _ := s.kubectl(t, nil, "-n", "keyward-demo", "get", "apikey", "occupancy-reader", "-o", "jsonpath={.status.state}")
			_, err := s.kubectl(t, nil, "-n", "keyward-demo", "get", "secret", "occupancy-reader-apikey")
			return out == "Archived" && err != nil
		})
		out, err := s.kubectl(t, nil, "-n", "keyward-demo", "patch", "apikey", "occupancy-reader", "--type", "merge", "-p", `{"spec":{"archived":false}}`)
		if err == nil || !strings.Contains(out, "archival is one-way") {
			t.Fatalf("un-archiving with kubectl: %v\n%s", err, out)
		}
	})

	t.Run("deleting a namespace cleans up (kube-controller-manager runs)", func(t *testing.T) {
		s.mustKubectl(t, "delete", "namespace", "e2e-apply", "--wait=true", "--timeout=60s")
	})

	t.Run("Ctrl-C stops everything", func(t *testing.T) {
		if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		select {
		case <-s.exited:
			if !s.cmd.ProcessState.Success() {
				t.Fatalf("keyward dev exited with %v", s.cmd.ProcessState)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("keyward dev did not stop within 30s of Ctrl-C")
		}
		out, _ := exec.Command("pgrep", "-f", s.dir).Output()
		if len(bytes.TrimSpace(out)) > 0 {
			t.Fatalf("processes left running: %s", out)
		}
		// The API server (which runs in a process group of its own) is
		// gone too: its address no longer answers.
		cfg, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(cfg.Host)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
			c.Close()
			t.Fatalf("the API server at %s still answers after Ctrl-C", u.Host)
		}
	})
	_ = ctx
}

// waitStates waits until every non-archived ApiKey of ns is Active with its
// Secret, and every archived one is Archived; it returns how long that took.
func waitStates(t *testing.T, s *system, ns string, within time.Duration) time.Duration {
	t.Helper()
	return waitKeys(t, s, ns, 4, within) // the samples' four keys
}

// waitKeys is waitStates for a namespace that holds at least n ApiKeys.
func waitKeys(t *testing.T, s *system, ns string, n int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var state string
	defer func() {
		if t.Failed() {
			t.Logf("the keys of %s, last seen: %s", ns, state)
		}
	}()
	eventually(t, within, "the keys of "+ns+" to be Active with Secrets", func() bool {
		var keys kw.ApiKeyList
		if err := s.c.List(context.Background(), &keys, client.InNamespace(ns)); err != nil || len(keys.Items) < n {
			state = fmt.Sprintf("%d keys, %v", len(keys.Items), err)
			return false
		}
		for _, k := range keys.Items {
			want := kw.StateActive
			if k.Spec.Archived {
				want = kw.StateArchived
			}
			if k.Status.State != want {
				state = k.Name + " is " + string(k.Status.State)
				return false
			}
			if want == kw.StateActive {
				sec := &corev1.Secret{}
				if err := s.c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: k.Status.SecretName}, sec); err != nil {
					state = k.Name + ": " + err.Error()
					return false
				}
			}
		}
		return true
	})
	return time.Since(start)
}

// eventually waits until cond holds (testenv.Eventually).
var eventually = testenv.Eventually

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
