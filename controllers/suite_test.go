package controllers

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/testenv"
)

var (
	testEnv *envtest.Environment
	cfg     *rest.Config
	k8s     client.Client

	// logs captures every line any manager of the test run logs, at the
	// highest verbosity, so TestMain can check no secret reached a log.
	logs testenv.Buffer
	// seen collects every token and secret the tests read from Secrets.
	seen sync.Map
)

func TestMain(m *testing.M) {
	ctrl.SetLogger(captureLogger())
	env, c, err := testenv.Start()
	testEnv = env
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg = c
	k8s, err = client.New(cfg, client.Options{Scheme: NewScheme()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		code = scanForSecrets()
	}
	_ = env.Stop()
	os.Exit(code)
}

// captureLogger logs, at the most verbose level keyward allows, into logs.
func captureLogger() logr.Logger { return logging.New(&logs, logging.MaxVerbosity) }

// scanForSecrets fails the run when any token or secret a test saw appears
// in a log line or an Event of the whole run.
func scanForSecrets() int {
	var events eventsv1.EventList
	if err := k8s.List(context.Background(), &events); err != nil {
		fmt.Fprintln(os.Stderr, "list events:", err)
		return 1
	}
	var text strings.Builder
	text.WriteString(logs.String())
	for _, e := range events.Items {
		fmt.Fprintf(&text, "%s %s %s\n", e.Reason, e.Note, e.Action)
	}
	all := text.String()
	// Look for every 12-character window of every secret and token, plain and
	// base64: client-go's hex dumps of request bodies would show a token only
	// in 16-byte pieces.
	const w = 12
	windows := map[string]string{}
	n := 0
	seen.Range(func(k, _ any) bool {
		n++
		v := k.(string)
		// A token starts with its public key ID: only what follows is secret.
		public := 0
		if strings.HasPrefix(v, keys.Prefix) {
			public = len(keys.Prefix) + keys.KeyIDLen + 1
		}
		b64 := base64.StdEncoding.EncodeToString([]byte(v))
		for _, form := range []string{v[public:], b64[(public+2)/3*4:]} {
			for i := 0; i+w <= len(form); i++ {
				windows[form[i:i+w]] = v[:6] + "…"
			}
		}
		return true
	})
	leaked := map[string]bool{}
	for i := 0; i+w <= len(all); i++ {
		if v, ok := windows[all[i:i+w]]; ok {
			if !leaked[v] {
				fmt.Fprintf(os.Stderr, "secret scan: %s leaked in: %q\n", v, all[max(0, i-300):min(len(all), i+100)])
			}
			leaked[v] = true
		}
	}
	leakedN := len(leaked)
	if n == 0 {
		fmt.Fprintln(os.Stderr, "secret scan: no secrets were collected; the scan would prove nothing")
		return 1
	}
	if leakedN > 0 {
		fmt.Fprintf(os.Stderr, "secret scan: %d of %d secrets or tokens appear in logs or Events\n", leakedN, n)
		return 1
	}
	fmt.Printf("secret scan: none of %d secrets and tokens appears in %d bytes of logs and %d Events\n", n, len(all), len(events.Items))
	return 0
}

// manager runs the controller for one namespace until stopped.
type manager struct {
	cancel context.CancelFunc
	done   chan error
	mgr    ctrl.Manager
	rec    *ApiKeyReconciler
}

type option func(*ApiKeyReconciler)

func withCrashAt(f func(string) bool) option { return func(r *ApiKeyReconciler) { r.CrashAt = f } }

// startManager starts a controller that watches only ns, so tests run side
// by side against one API server.
func startManager(t testing.TB, ns string, opts ...option) *manager {
	t.Helper()
	return startManagerWithConfig(t, cfg, ns, opts...)
}

func startManagerWithConfig(t testing.TB, cfg *rest.Config, ns string, opts ...option) *manager {
	t.Helper()
	co := CacheOptions()
	co.DefaultNamespaces = map[string]cache.Config{ns: {}}
	skip := true
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 NewScheme(),
		Cache:                  co,
		NewClient:              NewClient,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: &skip},
		Logger:                 captureLogger().WithValues("namespace", ns),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &ApiKeyReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("keyward-controller"),
		Endpoint:  "https://api.example.test",
	}
	for _, o := range opts {
		o(r)
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &manager{cancel: cancel, done: make(chan error, 1), mgr: mgr, rec: r}
	go func() { m.done <- mgr.Start(ctx) }()
	t.Cleanup(m.stop)
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("manager cache did not sync")
	}
	return m
}

func (m *manager) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
	m.cancel = nil
}

var nsCount struct {
	sync.Mutex
	n int
}

// namespace creates a fresh namespace for one test.
func namespace(t testing.TB) string {
	t.Helper()
	nsCount.Lock()
	nsCount.n++
	name := fmt.Sprintf("t%d-%s", nsCount.n, strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
	nsCount.Unlock()
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-")
	}
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

func newKey(ns, name string, scopes ...kw.Scope) *kw.ApiKey {
	if len(scopes) == 0 {
		scopes = []kw.Scope{"occupancy:read"}
	}
	return &kw.ApiKey{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       kw.ApiKeySpec{DisplayName: "Test " + name, Scopes: scopes},
	}
}

func create(t testing.TB, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func get[T client.Object](t testing.TB, ns, name string, obj T) T {
	t.Helper()
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		t.Fatalf("get %T %s/%s: %v", obj, ns, name, err)
	}
	if s, ok := any(obj).(*corev1.Secret); ok {
		remember(s)
	}
	return obj
}

// remember adds a Secret's key material to what the final scan looks for.
func remember(s *corev1.Secret) {
	for _, k := range []string{kw.SecretKeyToken, kw.SecretKeySecret} {
		if v := string(s.Data[k]); len(v) > 8 {
			seen.Store(v, true)
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s; last seen: %s", within, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCached waits until the manager's cache serves key as it is or later,
// for tests that call Reconcile themselves.
func (m *manager) waitCached(t testing.TB, key *kw.ApiKey) {
	t.Helper()
	eventually(t, 5*time.Second, "the cache to show ApiKey "+key.Name+" at "+key.ResourceVersion, func() (bool, string) {
		var cached kw.ApiKey
		if err := m.mgr.GetCache().Get(context.Background(), client.ObjectKeyFromObject(key), &cached); err != nil {
			return false, err.Error()
		}
		c, err := resourceversion.CompareResourceVersion(cached.ResourceVersion, key.ResourceVersion)
		return err == nil && c >= 0, "resourceVersion " + cached.ResourceVersion
	})
}

// waitReady waits until the ApiKey's Ready condition has the given reason.
func waitReason(t testing.TB, ns, name, reason string) *kw.ApiKey {
	t.Helper()
	key := &kw.ApiKey{}
	eventually(t, 10*time.Second, "ApiKey "+name+" to have Ready reason "+reason, func() (bool, string) {
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, key); err != nil {
			return false, err.Error()
		}
		c := readyCondition(key)
		if c == nil {
			return false, "no Ready condition"
		}
		return c.Reason == reason && c.ObservedGeneration == key.Generation, fmt.Sprintf("%s/%s: %s", c.Status, c.Reason, c.Message)
	})
	return key
}

func readyCondition(key *kw.ApiKey) *metav1.Condition {
	for i := range key.Status.Conditions {
		if key.Status.Conditions[i].Type == kw.ConditionReady {
			return &key.Status.Conditions[i]
		}
	}
	return nil
}

// holdStill checks that none of the objects is written for d.
func holdStill(t testing.TB, d time.Duration, objs ...client.Object) {
	t.Helper()
	versions := make([]string, len(objs))
	for i, o := range objs {
		get(t, o.GetNamespace(), o.GetName(), o)
		versions[i] = o.GetResourceVersion()
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		for i, o := range objs {
			get(t, o.GetNamespace(), o.GetName(), o)
			if o.GetResourceVersion() != versions[i] {
				t.Fatalf("%T %s was written (resourceVersion %s -> %s) while nothing changed",
					o, o.GetName(), versions[i], o.GetResourceVersion())
			}
		}
	}
}

func listEvents(t testing.TB, ns string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// countLines counts the log lines that mention both a and b.
func countLines(text, a, b string) int {
	n := 0
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, a) && strings.Contains(l, b) {
			n++
		}
	}
	return n
}
