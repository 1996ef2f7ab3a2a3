package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

var (
	issueKeys      = flag.Int("issue-keys", 10000, "ApiKeys created at once for the issuance run")
	controllerArgs = flag.String("controller-args", "", "more flags for the controller under test, space-separated (e.g. --max-concurrent-reconciles=1)")
	applied        = flag.Bool("applied", false, "create the ApiKeys as kubectl apply does, with the manifest again in the kubectl.kubernetes.io/last-applied-configuration annotation")
	controllerMem  = flag.Int("controller-memory-limit", -1, "the controller's memory limit in MiB, given to it as the pod's would be (GOMEMLIMIT at 90 %); -1: the one docs/install.md's Sizing gives for the keys issued, 0: none")
)

// sizingMiB is the controller memory limit docs/install.md gives for n
// ApiKeys: 64 MiB and 12 KiB a key.
func sizingMiB(n int) int { return 64 + (n*12+1023)/1024 }

// issuanceRun measures how fast the controller issues keys that a GitOps
// sync of a large tenant creates all at once, beside how fast an API
// server takes the writes one key costs when nothing but a client makes
// them (the limit). Each on a fresh API server of its own, with keyward's
// admission policies installed, the controller as its own process.
func issuanceRun() error {
	n := *issueKeys
	if n == 0 {
		return nil
	}
	limit, err := issuanceLimit(n)
	if err != nil {
		return err
	}
	// keyward on an API server of its own, as fresh as the limit's: the
	// limit's keys would otherwise sit in the controller's cache and queue
	// (and in etcd), and the controller would reconcile them beside the
	// ones it is timed on.
	say("issuance: a fresh API server for the controller")
	env, user, c, err := issuanceServer()
	if err != nil {
		return err
	}
	defer env.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := user.Config()
	cfg.QPS, cfg.Burst = -1, 1000
	// keyward: the controller as its own process, the same ApiKeys created
	// at once by the same 32 clients; the clock runs until every one is
	// Active.
	kc, _ := user.KubeConfig()
	dir, _ := os.MkdirTemp("", "keyward-issuance")
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	// The controller runs under the memory limit a pod would give it: its
	// runtime then sets GOMEMLIMIT at 90 % of the container's limit; here
	// the bench sets it, and reports the peak against the limit.
	memLimit := *controllerMem
	if memLimit < 0 {
		memLimit = sizingMiB(n)
	}
	// Both CPUs, as a pod without a CPU limit on this 2-CPU node would
	// have (the bench's other servers run on one).
	ctlEnv := []string{"GOMAXPROCS=2"}
	if memLimit > 0 {
		ctlEnv = append(ctlEnv, fmt.Sprintf("GOMEMLIMIT=%dMiB", memLimit*9/10))
	}
	ctl, err := startWith(ctlEnv, filepath.Join(*bin, "keyward"), append([]string{"controller", "--kubeconfig", kubeconfig, "--leader-elect=false",
		"--endpoint-url=https://api.example.com", "--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:8391",
		"--pprof-bind-address=" + issuancePprof},
		strings.Fields(*controllerArgs)...)...)
	if err != nil {
		return err
	}
	defer stop(ctl)
	if err := waitReady("http://127.0.0.1:8391/readyz", 0, ""); err != nil {
		return err
	}
	pinChildren(loadCPU + "," + serverCPU)
	// Deployed, the controller shares the node with others: here it may
	// use both CPUs, as the API server does.
	_ = exec.Command("taskset", "-apc", loadCPU+","+serverCPU, fmt.Sprint(ctl.Process.Pid)).Run()

	active, err := untilActive(ctx, cfg, "issue", n)
	if err != nil {
		return err
	}
	say("issuance: %d ApiKeys created at once, issued by the controller", n)
	before, err := apiserverRequests(ctx, cfg)
	if err != nil {
		return err
	}
	cpu0 := cpuTime(ctl.Process.Pid)
	anonPeak := peakAnonMiB(ctl.Process.Pid)
	// What every key costs the control plane: an ApiKey, its record, its
	// Secret and an Event, in the API server's memory and in etcd's.
	apiserver, etcd := childPID("kube-apiserver"), childPID("etcd")
	apiserver0, etcd0 := rssMiB(apiserver), rssMiB(etcd)
	began := time.Now()
	var created atomic.Int64
	var createdIn time.Duration
	var once sync.Once
	if err := parallel(n, func(i int) error {
		err := c.Create(ctx, benchKey("issue", fmt.Sprintf("k%06d", i)))
		if created.Add(1) == int64(n) {
			once.Do(func() { createdIn = time.Since(began) })
		}
		return err
	}); err != nil {
		return err
	}
	select {
	case <-active:
	case <-time.After(time.Duration(n/10+60) * time.Second):
		return fmt.Errorf("not every key was Active after %s", time.Since(began))
	}
	took := time.Since(began)
	cpuIssued := cpuTime(ctl.Process.Pid) - cpu0
	rate := float64(n) / took.Seconds()
	report("keyward issuance, keys created at once", fmt.Sprintf("%.0f keys/s", rate),
		fmt.Sprintf("%d ApiKeys%s Active in %s (created in %s); %.0f%% of the API server alone; target ≥ 250 keys/s",
			n, map[bool]string{true: " (as kubectl apply creates them)"}[*applied],
			took.Round(100*time.Millisecond), createdIn.Round(100*time.Millisecond), 100*rate/limit))
	// What the API server was asked per key while the controller issued
	// them (the clients' own creates included).
	time.Sleep(2 * time.Second)
	after, err := apiserverRequests(ctx, cfg)
	if err != nil {
		return err
	}
	var per []string
	total := 0.0
	for k, v := range after {
		// Every refusal counts; of the rest, what each key costs (not the
		// few requests of the controller's own start and leases).
		if d := v - before[k]; d >= float64(n)/20 || refused(k) && d > 0 {
			per = append(per, fmt.Sprintf("%s %.2f", k, d/float64(n)))
			total += d
		}
	}
	sort.Strings(per)
	report("API requests per key issued", fmt.Sprintf("%.2f", total/float64(n)), strings.Join(per, ", "))
	// The heap the controller holds, after a collection (and, with
	// --profile, what fills it, kept as the profile's file + suffix).
	liveHeap := func(suffix string) (float64, error) {
		if *profile != "" {
			if err := fetch("http://"+issuancePprof+"/debug/pprof/heap?gc=1", *profile+suffix); err != nil {
				return 0, err
			}
		}
		return heapAlloc("http://" + issuancePprof)
	}
	// Once every key is issued: what its memory limit must leave room for,
	// beside the collector's headroom.
	live, err := liveHeap(".controller-heap")
	if err != nil {
		return err
	}
	report("controller heap once every key is issued", fmt.Sprintf("%.1f KiB per key", live/1024/float64(n)),
		fmt.Sprintf("%.0f MiB live after a collection (HeapAlloc), %d keys", live/(1<<20), n))
	// The same once the controller is idle: the reconciles that each key's
	// own status write wakes still run after the last key turned Active,
	// and what they allocate while the collection marks counts as live.
	// At rest is what a replica holds for its keys.
	waited, idle := untilIdle(ctl.Process.Pid, 5*time.Minute)
	rest, err := liveHeap(".controller-heap-idle")
	if err != nil {
		return err
	}
	when := fmt.Sprintf("once the controller was idle (%s after the last key turned Active)", waited.Round(time.Second))
	if !idle {
		when = fmt.Sprintf("the controller still busy %s after the last key turned Active: not at rest", waited.Round(time.Second))
	}
	report("controller heap at rest", fmt.Sprintf("%.1f KiB per key", rest/1024/float64(n)),
		fmt.Sprintf("%.0f MiB live after a collection, %s", rest/(1<<20), when))
	perKey := func(pid int, before float64) string {
		return fmt.Sprintf("%.1f KiB", (rssMiB(pid)-before)*1024/float64(n))
	}
	report("control plane memory per key issued (RSS growth over the keys)",
		fmt.Sprintf("%s API server, %s etcd", perKey(apiserver, apiserver0), perKey(etcd, etcd0)),
		fmt.Sprintf("ApiKey, record, Secret and Event a key; %d keys; RSS %.0f and %.0f MiB after", n, rssMiB(apiserver), rssMiB(etcd)))
	limitText := "no memory limit"
	if memLimit > 0 {
		limitText = fmt.Sprintf("under a %d MiB limit (GOMEMLIMIT %d MiB)", memLimit, memLimit*9/10)
	}
	report("controller during issuance", fmt.Sprintf("%.0f MiB peak", hwmMiB(ctl.Process.Pid)),
		fmt.Sprintf("%s; anonymous memory (what a limit counts and cannot reclaim) %.0f MiB at most; RSS %.0f MiB after; CPU %.2f ms per key",
			limitText, anonPeak(), rssMiB(ctl.Process.Pid),
			float64(cpuIssued.Microseconds())/1000/float64(n)))
	return nil
}

// untilActive returns a channel closed once n ApiKeys of namespace ns have
// been seen Active. It counts from an informer, which lists again and
// watches on when the API server closes a watch (as it does to a watcher
// it finds slow while thousands of keys change at once); a bare watch
// would end there and leave the count short for ever.
func untilActive(ctx context.Context, cfg *rest.Config, ns string, n int) (<-chan struct{}, error) {
	ca, err := crcache.New(cfg, crcache.Options{Scheme: controllers.NewScheme(),
		DefaultNamespaces: map[string]crcache.Config{ns: {}}})
	if err != nil {
		return nil, err
	}
	inf, err := ca.GetInformer(ctx, &kw.ApiKey{})
	if err != nil {
		return nil, err
	}
	active := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]bool{}
	saw := func(o any) {
		k, ok := o.(*kw.ApiKey)
		if !ok || k.Status.State != kw.StateActive {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[k.Name] || len(seen) == n {
			return
		}
		seen[k.Name] = true
		if len(seen)%(max(n/5, 1)) == 0 {
			say("   %d keys Active", len(seen))
		}
		if len(seen) == n {
			close(active)
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: saw,
		UpdateFunc: func(_, o any) { saw(o) }}); err != nil {
		return nil, err
	}
	go func() { _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the bench's ApiKey informer did not sync")
	}
	return active, nil
}

// untilIdle waits until the process pid has used under 2 % of a CPU for
// five seconds, giving up after limit; it returns how long it waited and
// whether the process went idle.
func untilIdle(pid int, limit time.Duration) (time.Duration, bool) {
	began := time.Now()
	const window = 5 * time.Second
	for time.Since(began) < limit {
		before := cpuTime(pid)
		time.Sleep(window)
		if cpuTime(pid)-before < window/50 {
			return time.Since(began), true
		}
	}
	return time.Since(began), false
}

// heapAlloc is the Go heap in use of the process serving pprof at base,
// right after a collection.
func heapAlloc(base string) (float64, error) {
	resp, err := http.Get(base + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no HeapAlloc in %s's heap profile", base)
}

// issuancePprof is where the controller under test serves pprof.
const issuancePprof = "127.0.0.1:8392"

// issuanceServer starts an API server with keyward's admission policies
// and namespaces limit and issue, and returns a client that writes as the
// controller's ServiceAccount would (the admission policies let only it
// write records), with every right.
func issuanceServer() (*envtest.Environment, *envtest.AuthenticatedUser, client.WithWatch, error) {
	env, cfg, err := testenv.StartFsync(*etcdFsync)
	if err != nil {
		return nil, nil, nil, err
	}
	pinChildren(loadCPU + "," + serverCPU)
	ctx := context.Background()
	fail := func(err error) (*envtest.Environment, *envtest.AuthenticatedUser, client.WithWatch, error) {
		_ = env.Stop()
		return nil, nil, nil, err
	}
	if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", "admission")); err != nil {
		return fail(err)
	}
	user, err := env.AddUser(envtest.User{Name: "system:serviceaccount:keyward-system:keyward-controller",
		Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(err)
	}
	cfg = user.Config()
	cfg.QPS, cfg.Burst = -1, 1000
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return fail(err)
	}
	for _, ns := range []string{"limit", "issue"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return fail(err)
		}
	}
	return env, user, c, nil
}

// issuanceLimit is the API server's own rate, in keys a second, for the
// writes issuing one key takes at the least (the ApiKey, its Secret, its
// record, its status), made by 32 clients as fast as a fresh API server
// takes them.
// benchKey is the ApiKey the issuance runs create; with --applied, as
// kubectl apply (client-side) creates it: its manifest again, in an
// annotation.
func benchKey(ns, name string) *kw.ApiKey {
	k := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"bench:read"}}}
	if *applied {
		manifest, err := json.Marshal(map[string]any{"apiVersion": kw.GroupVersion.String(), "kind": "ApiKey",
			"metadata": map[string]any{"annotations": map[string]any{}, "name": name, "namespace": ns}, "spec": k.Spec})
		if err != nil {
			panic(err) // a map of strings and a spec always marshal
		}
		k.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: string(manifest) + "\n"}
	}
	return k
}

func issuanceLimit(n int) (float64, error) {
	say("issuance: the API server's own rate for the writes of %d keys, on a fresh API server", n)
	env, _, c, err := issuanceServer()
	if err != nil {
		return 0, err
	}
	defer env.Stop()
	ctx := context.Background()
	began := time.Now()
	if err := parallel(n, func(i int) error {
		k, _ := keys.Generate()
		name := fmt.Sprintf("k%06d", i)
		ak := benchKey("limit", name)
		if err := c.Create(ctx, ak); err != nil {
			return err
		}
		owner := ownedBy(ak)
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "limit", Name: name + "-apikey", OwnerReferences: owner},
			Data: map[string][]byte{kw.SecretKeyToken: []byte(k.Token())}}
		if err := c.Create(ctx, sec); err != nil {
			return err
		}
		rec := &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: "limit", Name: name, OwnerReferences: owner},
			Spec: kw.ApiKeyRecordSpec{Keys: []kw.RecordedKey{{KeyID: k.ID, Digest: k.Digest(), IssuedAt: metav1.Now()}}}}
		if err := c.Create(ctx, rec); err != nil {
			return err
		}
		before := ak.DeepCopy()
		ak.Status.State, ak.Status.KeyID = kw.StateActive, k.ID
		return c.Status().Patch(ctx, ak, client.MergeFrom(before))
	}); err != nil {
		return 0, err
	}
	limit := float64(n) / time.Since(began).Seconds()
	report("API server alone: the writes of one key", fmt.Sprintf("%.0f keys/s", limit),
		fmt.Sprintf("ApiKey, Secret, record, status for %d keys by 32 clients: %.0f writes/s (the limit)", n, 4*limit))
	return limit, nil
}

// refused reports whether a row of apiserverRequests counts requests the
// API server did not answer with 2xx: its name ends in their code.
func refused(row string) bool { return len(strings.Fields(row)) == 3 }

// apiserverRequests reads apiserver_request_total from the API server's
// own metrics, summed by verb and resource ("POST secrets"), those the API
// server answered with other than 2xx apart ("PATCH apikeys 409").
func apiserverRequests(ctx context.Context, cfg *rest.Config) (map[string]float64, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	body, err := cs.RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("the API server's metrics: %w", err)
	}
	label := func(line, name string) string {
		_, v, ok := strings.Cut(line, name+`="`)
		if !ok {
			return ""
		}
		v, _, _ = strings.Cut(v, `"`)
		return v
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		res := label(line, "resource")
		if sub := label(line, "subresource"); sub != "" {
			res += "/" + sub
		}
		if code := label(line, "code"); code != "" && code[0] != '2' {
			res += " " + code // refused or failed: counted apart
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			out[label(line, "verb")+" "+res] += v
		}
	}
	return out, nil
}

// ownedBy is the controller reference to ak that keyward sets on its
// records and Secrets.
func ownedBy(ak *kw.ApiKey) []metav1.OwnerReference {
	return []metav1.OwnerReference{{APIVersion: kw.GroupVersion.String(), Kind: "ApiKey",
		Name: ak.Name, UID: ak.UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
}

// parallel runs f(0..n-1) on 32 goroutines and returns the first error.
func parallel(n int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var first atomic.Pointer[error]
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return *e
	}
	return nil
}
