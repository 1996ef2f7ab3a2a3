package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

var (
	env *envtest.Environment
	cfg *rest.Config
	k8s client.Client
)

// klogOut receives client-go's klog output for the whole run, through the
// redacting logger: klog's logger may only be set before any client runs,
// so the secret scan reads its share of this buffer instead of swapping it.
var klogOut = &testenv.Buffer{}

func TestMain(m *testing.M) {
	klog.SetLogger(logging.New(klogOut, logging.MaxVerbosity))
	env, cfg, k8s = testenv.StartWithClient()
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := testenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// endpoint is a running auth endpoint.
type endpoint struct{ url, health, grpc string }

// startEndpoint runs the auth endpoint with the given identity until the
// test ends, and waits until it is ready.
func startEndpoint(t testing.TB, c *rest.Config, namespaces ...string) *endpoint {
	t.Helper()
	return startEndpointWith(t, c, AuthnOptions{Namespaces: namespaces})
}

// startEndpointWith is startEndpoint with more options.
func startEndpointWith(t testing.TB, c *rest.Config, o AuthnOptions) *endpoint {
	t.Helper()
	o.AllowQueryKeys = true
	if o.Logger.GetSink() == nil {
		o.Logger = logging.New(io.Discard, 0)
	}
	// A port another test process bound since FreeAddr chose it (rare:
	// they draw at random) is drawn again, up to twice.
	for attempt := 1; ; attempt++ {
		e, err := runEndpoint(t, c, o)
		if err == nil {
			return e
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 3 {
			t.Fatalf("the endpoint stopped before it was ready: %v", err)
		}
		t.Logf("attempt %d: %v; drawing other ports", attempt, err)
	}
}

// runEndpoint runs the endpoint on fresh ports until the test ends, and
// waits until it is ready or has stopped with an error.
func runEndpoint(t testing.TB, c *rest.Config, o AuthnOptions) (*endpoint, error) {
	t.Helper()
	o.HTTPAddr, o.GRPCAddr, o.HealthAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	stopped := make(chan struct{})
	go func() { runErr = RunAuthn(ctx, c, o); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	var failed bool
	eventually(t, 20*time.Second, "the endpoint to be ready", func() bool {
		// An endpoint that could not start says why, instead of a
		// readiness that never comes.
		select {
		case <-stopped:
			failed = true
			return true
		default:
		}
		resp, err := http.Get("http://" + o.HealthAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if failed {
		if runErr == nil {
			runErr = errors.New("RunAuthn returned no error")
		}
		return nil, runErr
	}
	return &endpoint{url: "http://" + o.HTTPAddr, health: "http://" + o.HealthAddr, grpc: o.GRPCAddr}, nil
}

// startController runs the controller for the test's namespace.
func startController(t testing.TB) { t.Helper(); startControllerWith(t, cfg) }

// startControllerWith runs the controller with the given connection until
// the test ends or stop is called.
func startControllerWith(t testing.TB, c *rest.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunController(ctx, c, ControllerOptions{
			EndpointURL: "http://example.test", MetricsAddr: "0", HealthAddr: "0",
			Logger: logging.New(io.Discard, 0), AgainInProcess: true,
		})
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func (e *endpoint) check(t testing.TB, token, scope string) int {
	t.Helper()
	code, err := e.status(token, scope)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// status is a check's status code; unlike check it may be called from
// goroutines other than the test's.
func (e *endpoint) status(token, scope string) (int, error) {
	req, _ := http.NewRequest("GET", e.url+"/authn?scope="+scope, nil)
	req.Header.Set("x-api-key", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// eventually waits until cond holds (testenv.Eventually).
var eventually = testenv.Eventually

func namespace(t testing.TB, name string) string {
	t.Helper()
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// issue creates ApiKeys and returns their tokens once issued.
func issue(t testing.TB, ns string, names ...string) map[string]string {
	t.Helper()
	for _, n := range names {
		k := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"occupancy:read"}}}
		if err := k8s.Create(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	tokens := map[string]string{}
	for _, n := range names {
		sec := &corev1.Secret{}
		eventually(t, 20*time.Second, "the Secret of "+n, func() bool {
			return k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: n + "-apikey"}, sec) == nil
		})
		tokens[n] = string(sec.Data[kw.SecretKeyToken])
	}
	return tokens
}

// TestEndpointNeedsOnlyItsRole runs the endpoint as a user holding only the
// ClusterRole generated for it, and checks that user can read no Secret.
func TestEndpointNeedsOnlyItsRole(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "rbac", "authn", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(data, role); err != nil || role.Name != "keyward-authn" {
		t.Fatalf("config/rbac/authn/role.yaml: %v %q", err, role.Name)
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Resources, "secrets") || slices.Contains(r.Resources, "*") ||
			slices.ContainsFunc(r.Verbs, func(v string) bool { return v != "get" && v != "list" && v != "watch" }) {
			t.Fatalf("the endpoint's role grants more than reading keys: %+v", r)
		}
	}
	ctx := context.Background()
	for _, o := range []client.Object{role, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "keyward-authn"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "keyward-authn"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "authn-under-test"}},
	}} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	user, err := env.AddUser(envtest.User{Name: "authn-under-test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := namespace(t, "rbac")
	startController(t)
	e := startEndpoint(t, user.Config(), ns)
	tokens := issue(t, ns, "a")
	eventually(t, 5*time.Second, "the key to verify", func() bool { return e.check(t, tokens["a"], "occupancy:read") == 200 })

	asUser, err := client.New(user.Config(), client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	err = asUser.Get(ctx, client.ObjectKey{Namespace: ns, Name: "a-apikey"}, &corev1.Secret{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("the endpoint's identity reading a Secret got %v, want Forbidden", err)
	}
}

// TestArchiveAndDeleteRevokeWithin100ms measures, over 40 keys, the time
// from the API server accepting an archive (or a delete) to the first 401.
func TestArchiveAndDeleteRevokeWithin100ms(t *testing.T) {
	ns := namespace(t, "revoke")
	startController(t)
	e := startEndpoint(t, cfg, ns)
	names := make([]string, 40)
	for i := range names {
		names[i] = fmt.Sprintf("k%02d", i)
	}
	tokens := issue(t, ns, names...)
	for _, n := range names {
		eventually(t, 5*time.Second, n+" to verify", func() bool { return e.check(t, tokens[n], "") == 200 })
	}
	ctx := context.Background()
	var lat []time.Duration
	for i, n := range names {
		key := &kw.ApiKey{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, key); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			patch := client.MergeFrom(key.DeepCopy())
			key.Spec.Archived = true
			if err := k8s.Patch(ctx, key, patch); err != nil {
				t.Fatal(err)
			}
		} else if err := k8s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for e.check(t, tokens[n], "") == 200 {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s still verifies 5s after it was revoked", n)
			}
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("revocation over %d keys: p50 %s, p99 %s, max %s", len(lat), p50, p99, lat[len(lat)-1])
	if p99 > 100*time.Millisecond {
		t.Fatalf("p99 revocation latency %s, want under 100ms", p99)
	}
}

// TestEndpointServesWhileAPIServerIsDown cuts the endpoint off from the
// API server: keys still verify from the index; once it can reach the API
// server again, changes flow again.
func TestEndpointServesWhileAPIServerIsDown(t *testing.T) {
	ns := namespace(t, "outage")
	startController(t)
	link, viaLink := linkedConfig(t)
	e := startEndpoint(t, viaLink, ns)
	tokens := issue(t, ns, "steady", "doomed")
	for _, n := range []string{"steady", "doomed"} {
		eventually(t, 5*time.Second, n+" to verify", func() bool { return e.check(t, tokens[n], "") == 200 })
	}
	link.cut()
	ctx := context.Background()
	if err := k8s.Delete(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "doomed"}}); err != nil {
		t.Fatal(err)
	}
	for range 40 {
		if code := e.check(t, tokens["steady"], "occupancy:read"); code != 200 {
			t.Fatalf("cut off from the API server, a good key got %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	link.restore(t)
	eventually(t, 60*time.Second, "the key deleted during the outage to be refused", func() bool { return e.check(t, tokens["doomed"], "") == 401 })
	fresh := issue(t, ns, "fresh")
	eventually(t, 30*time.Second, "a key issued after the outage to verify", func() bool { return e.check(t, fresh["fresh"], "") == 200 })
	if code := e.check(t, tokens["steady"], ""); code != 200 {
		t.Fatalf("after the outage a good key got %d", code)
	}
}

// A replica that starts with keys already there loads them page by page,
// each page fed to the index as it comes, and a re-list after an outage
// (paged too) drops what was deleted meanwhile.
func TestIndexLoadsPageByPage(t *testing.T) {
	defer func(n int64) { index.ListPageSize = n }(index.ListPageSize)
	index.ListPageSize = 2
	ns := namespace(t, "paged")
	startController(t)
	names := []string{"a", "b", "c", "d", "e"}
	tokens := issue(t, ns, names...)
	for _, n := range names {
		eventually(t, 10*time.Second, "the record of "+n, func() bool {
			return k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: n}, &kw.ApiKeyRecord{}) == nil
		})
	}
	link, viaLink := linkedConfig(t)
	ix := index.New()
	e := startEndpointWith(t, viaLink, AuthnOptions{Namespaces: []string{ns}, Index: ix})
	for _, n := range names {
		if code := e.check(t, tokens[n], ""); code != 200 {
			t.Errorf("key %s loaded in the first list: %d", n, code)
		}
	}
	if p := ix.ListPages(); p < 6 {
		t.Errorf("%d list pages for 5 ApiKeys and 5 records in pages of 2, want at least 6", p)
	}
	link.cut()
	if err := k8s.Delete(context.Background(), &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "c"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	link.restore(t)
	eventually(t, 60*time.Second, "the key deleted during the outage to be refused", func() bool { return e.check(t, tokens["c"], "") == 401 })
	for _, n := range []string{"a", "b", "d", "e"} {
		if code := e.check(t, tokens[n], ""); code != 200 {
			t.Errorf("key %s after the re-list: %d", n, code)
		}
	}
}

// With --max-staleness, an endpoint cut off from the API server for longer
// fails closed: 503 stale and not ready, until the link is back.
func TestMaxStalenessFailsClosedDuringAnOutage(t *testing.T) {
	ns := namespace(t, "stale")
	startController(t)
	link, viaLink := linkedConfig(t)
	e := startEndpointWith(t, viaLink, AuthnOptions{Namespaces: []string{ns}, MaxStaleness: 2 * time.Second})
	tok := issue(t, ns, "a")["a"]
	eventually(t, 5*time.Second, "the key to verify", func() bool { return e.check(t, tok, "") == 200 })
	// Quiet but connected is not stale.
	time.Sleep(3 * time.Second)
	if code := e.check(t, tok, ""); code != 200 {
		t.Fatalf("connected and quiet for longer than the limit: %d", code)
	}
	link.cut()
	cut := time.Now()
	eventually(t, 10*time.Second, "checks to fail closed", func() bool { return e.check(t, tok, "") == 503 })
	t.Logf("503 stale %s after the cut (limit 2s)", time.Since(cut).Round(100*time.Millisecond))
	if took := time.Since(cut); took < 2*time.Second {
		t.Errorf("stale after %s, before the 2s limit", took)
	}
	if resp, err := http.Get(e.health + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 500 && resp.StatusCode != 503 {
			t.Errorf("readiness while stale: %d", resp.StatusCode)
		}
	}
	link.restore(t)
	eventually(t, 60*time.Second, "checks to pass again once the link is back", func() bool { return e.check(t, tok, "") == 200 })
}

// link is a TCP proxy to the API server that can be cut and restored, as a
// network partition would.
type link struct {
	addr, target string
	l            net.Listener
	mu           sync.Mutex
	conns        []net.Conn
}

// linkedConfig returns a link to the test's API server and a client
// configuration that goes through it.
func linkedConfig(t testing.TB) (*link, *rest.Config) {
	t.Helper()
	lk := newLink(t, cfg.Host)
	c := rest.CopyConfig(cfg)
	c.Host = "https://" + lk.addr
	return lk, c
}

func newLink(t testing.TB, target string) *link {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	lk := &link{target: u.Host}
	lk.listen(t, "127.0.0.1:0")
	t.Cleanup(lk.cut)
	return lk
}

func (lk *link) listen(t testing.TB, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	lk.l, lk.addr = l, l.Addr().String()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", lk.target)
			if err != nil {
				c.Close()
				continue
			}
			lk.mu.Lock()
			lk.conns = append(lk.conns, c, up)
			lk.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

func (lk *link) cut() {
	lk.l.Close()
	lk.mu.Lock()
	defer lk.mu.Unlock()
	for _, c := range lk.conns {
		c.Close()
	}
	lk.conns = nil
}

func (lk *link) restore(t testing.TB) { lk.listen(t, lk.addr) }

// TestRestrictedScopeFollowsNamespaceLabels: when a namespace loses the
// label that allows write access, its key stops passing its write scope
// within a second (403) while its other scope keeps working, the ApiKey says
// ScopeNotAllowed, and giving the label back restores both; the key is the
// same throughout.
func TestRestrictedScopeFollowsNamespaceLabels(t *testing.T) {
	ctx := context.Background()
	if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", "policy")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}}) })
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "writers", Labels: map[string]string{"keyward.dev/write-access": "true"}}}
	if err := k8s.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	startController(t)
	e := startEndpoint(t, cfg)
	key := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "writers", Name: "robot"},
		Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"occupancy:read", "devices:write"}}}
	if err := k8s.Create(ctx, key); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{}
	eventually(t, 20*time.Second, "the key to be issued", func() bool {
		return k8s.Get(ctx, client.ObjectKey{Namespace: "writers", Name: "robot-apikey"}, sec) == nil
	})
	token := string(sec.Data[kw.SecretKeyToken])
	eventually(t, 5*time.Second, "write access to pass", func() bool { return e.check(t, token, "devices:write") == 200 })

	relabel := func(allow bool) time.Time {
		t.Helper()
		if err := k8s.Get(ctx, client.ObjectKey{Name: "writers"}, ns); err != nil {
			t.Fatal(err)
		}
		if allow {
			ns.Labels["keyward.dev/write-access"] = "true"
		} else {
			delete(ns.Labels, "keyward.dev/write-access")
		}
		if err := k8s.Update(ctx, ns); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	reason := func() string {
		var k kw.ApiKey
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(key), &k); err != nil {
			t.Fatal(err)
		}
		if c := meta.FindStatusCondition(k.Status.Conditions, kw.ConditionReady); c != nil {
			return string(c.Status) + "/" + c.Reason
		}
		return ""
	}

	at := relabel(false)
	eventually(t, time.Second, "the write scope to be refused within a second", func() bool {
		return e.check(t, token, "devices:write") == 403
	})
	t.Logf("write scope refused %s after the label was removed", time.Since(at).Round(time.Millisecond))
	if code := e.check(t, token, "occupancy:read"); code != 200 {
		t.Fatalf("the key's other scope stopped working: %d", code)
	}
	eventually(t, 10*time.Second, "Ready=False ScopeNotAllowed", func() bool { return reason() == "False/"+kw.ReasonScopeNotAllowed })

	at = relabel(true)
	eventually(t, time.Second, "the write scope to pass again", func() bool { return e.check(t, token, "devices:write") == 200 })
	t.Logf("write scope allowed again %s after the label came back", time.Since(at).Round(time.Millisecond))
	eventually(t, 10*time.Second, "Ready=True Issued", func() bool { return reason() == "True/"+kw.ReasonIssued })
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: "writers", Name: "robot-apikey"}, sec); err != nil ||
		string(sec.Data[kw.SecretKeyToken]) != token {
		t.Fatal("the key was regenerated")
	}
}
