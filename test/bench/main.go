// Command bench is `make bench`: it measures the auth endpoint against a
// no-op baseline in the same run, on a real API server.
//
//  1. Revocation: with 10,000 keys loaded, archive 200 keys one by one and
//     time each from the API server accepting the patch to the first 401.
//  2. With 100,000 keys loaded: the endpoint's resident memory; forward-auth
//     throughput and p99 latency under wrk, against a no-op HTTP server;
//     gRPC Check throughput against a no-op ext_authz server.
//  3. Durability (--phases durability): the archive PATCH with etcd as
//     envtest runs it (no fsync) and as production runs it (fsync).
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

var (
	keysTotal   = flag.Int("keys", 100000, "keys loaded for the throughput and memory runs")
	limitedKeys = 2000 // with limits, beside them
	revokeKeys  = flag.Int("revoke-keys", 10000, "keys loaded for the revocation run")
	revocations = flag.Int("revocations", 200, "archivals timed")
	duration    = flag.Duration("duration", 4*time.Second, "length of each load run")
	rounds      = flag.Int("rounds", 7, "rounds of one load run on each server under test")
	conns       = flag.Int("connections", 32, "concurrent connections of each load run")
	bin         = flag.String("bin", "bin", "folder with keyward, bench-noop and bench-inproc")
	authnArgs   = flag.String("authn-args", "", "more flags for the endpoint under test, space-separated (e.g. --max-header-bytes=8192)")
	phases      = flag.String("phases", "issuance,endpoint,usage,scale,durability", "what to run: issuance (the controller), endpoint (revocation, memory, throughput, hostile load), usage (collection from 10 replicas), scale (checks at 10 and 1,000,000 keys in process), durability (the archive PATCH with etcd without and with fsync)")
	usageKeys   = flag.Int("usage-keys", 10000, "ApiKeys of the usage phase")
	cpEnv       = flag.String("control-plane-env", "", "environment for the endpoint phase's API server and etcd, comma-separated KEY=VALUE (e.g. GOGC=400), for experiments on the control plane's share of a revocation")
	profile     = flag.String("profile", "", "write CPU profiles of the endpoint and of the baselines during their first wrk runs here (and here.noop, here.fastnoop); a longer --duration gives finer profiles")
)

func main() {
	flag.Parse()
	// envtest logs through controller-runtime; the bench reports what it
	// measures and nothing else.
	ctrllog.SetLogger(logr.Discard())
	// The driver and what it starts (the API server, etcd, the gRPC load)
	// run on the load CPU; the servers under test are pinned to the other.
	if out, err := exec.Command("taskset", "-apc", loadCPU, strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: pin to CPU %s: %v %s\n", loadCPU, err, out)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type result struct{ name, value, note string }

var results []result

func report(name, value, note string) {
	results = append(results, result{name, value, note})
	fmt.Printf("   %-46s %-18s %s\n", name, value, note)
}

func run() error {
	for _, p := range strings.Split(*phases, ",") {
		var err error
		switch p {
		case "issuance":
			err = issuanceRun()
		case "endpoint":
			err = endpointRun()
		case "usage":
			err = usageRun()
		case "scale":
			err = scaleRun()
		case "durability":
			err = durabilityRun()
		default:
			err = fmt.Errorf("--phases: unknown %q", p)
		}
		if err != nil {
			return err
		}
	}
	fmt.Println("\n| measure | result | note |\n|---|---|---|")
	for _, r := range results {
		fmt.Printf("| %s | %s | %s |\n", r.name, r.value, r.note)
	}
	return nil
}

func endpointRun() error {
	say("starting the API server")
	env, cfg, err := startControlPlane()
	if err != nil {
		return err
	}
	defer env.Stop()
	// Keys and records are written as the controller's ServiceAccount (the
	// admission policies, installed below, let only it write records).
	writer, err := env.AddUser(envtest.User{Name: "system:serviceaccount:keyward-system:keyward-controller",
		Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	cfg = writer.Config()
	cfg.QPS, cfg.Burst = -1, 1000
	c, err := client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return err
	}
	user, err := env.AddUser(envtest.User{Name: "bench", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, _ := user.KubeConfig()
	dir, _ := os.MkdirTemp("", "keyward-bench")
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}

	ctx := context.Background()
	say("creating %d keys", *revokeKeys)
	tokens, err := createKeys(ctx, c, "bench", 0, *revokeKeys, noLimits)
	if err != nil {
		return err
	}
	authn, err := start(filepath.Join(*bin, "keyward"), append([]string{"authn", "--kubeconfig", kubeconfig,
		"--http-address", "127.0.0.1:8180", "--grpc-address", "127.0.0.1:8181",
		"--metrics-bind-address", "127.0.0.1:8090", "--health-probe-bind-address", "127.0.0.1:8091",
		"--pprof-bind-address", "127.0.0.1:8092"}, strings.Fields(*authnArgs)...)...)
	if err != nil {
		return err
	}
	defer stop(authn)
	if err := waitReady("http://127.0.0.1:8091/readyz", *revokeKeys, tokens[len(tokens)-1]); err != nil {
		return err
	}

	say("revocation: %d archivals with %d keys loaded", *revocations, *revokeKeys)
	// The admission policies as shipped: the archival PATCH passes them.
	if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", "admission")); err != nil {
		return err
	}
	if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", "policy")); err != nil {
		return err
	}
	// Each size is measured twice: with the API server and etcd at the
	// load generator's priority (they share its CPU), and with them at nice
	// -10, so that they take the CPU from wrk when a request wakes them, as
	// a control plane does that shares no CPU with the load: the difference
	// is what a PATCH loses waiting for that CPU (docs/benchmarks.md).
	n := *revocations
	if err := revocation(ctx, c, authn.Process.Pid, 0, tokens[:n], tokens[2*n:], dir, false); err != nil {
		return err
	}
	if err := revocation(ctx, c, authn.Process.Pid, n, tokens[n:2*n], tokens[2*n:], dir, true); err != nil {
		return err
	}

	say("creating %d more keys", *keysTotal-*revokeKeys)
	more, err := createKeys(ctx, c, "bench", *revokeKeys, *keysTotal, noLimits)
	if err != nil {
		return err
	}
	if err := waitReady("http://127.0.0.1:8091/readyz", *keysTotal, more[len(more)-1]); err != nil {
		return err
	}
	// The same at every key loaded, with keys added last (the newest
	// records, the index's latest growth).
	if err := revocation(ctx, c, authn.Process.Pid, *revokeKeys, more[:n], more[2*n:], dir, false); err != nil {
		return err
	}
	if err := revocation(ctx, c, authn.Process.Pid, *revokeKeys+n, more[n:2*n], more[2*n:], dir, true); err != nil {
		return err
	}
	tokens = append(tokens[2*n:], more[2*n:]...)
	settle()
	report("endpoint memory with keys loaded", fmt.Sprintf("%.1f MiB RSS", rssMiB(authn.Process.Pid)),
		fmt.Sprintf("%d keys, 90%% of them added by watch while it ran; Go heap in use %.1f MiB; target ≤ 150 MiB",
			*keysTotal, heapInUseMiB("http://127.0.0.1:8092")))
	// A replica that starts with every key already there (a rollout, a
	// scale-up) loads them in its first list.
	fresh, err := start(filepath.Join(*bin, "keyward"), "authn", "--kubeconfig", kubeconfig,
		"--http-address", "127.0.0.1:8280", "--grpc-address", "127.0.0.1:8281",
		"--metrics-bind-address", "127.0.0.1:8290", "--health-probe-bind-address", "127.0.0.1:8291", "--pprof-bind-address", "127.0.0.1:8292")
	if err != nil {
		return err
	}
	loaded := time.Now()
	apiCPU := controlPlaneCPU()
	if err := waitReady("http://127.0.0.1:8291/readyz", *keysTotal, ""); err != nil {
		stop(fresh)
		return err
	}
	took := time.Since(loaded)
	// Who the load time is spent in: the replica decoding, or the API
	// server and etcd serving the pages.
	replicaCPU, apiCPU := cpuTime(fresh.Process.Pid), controlPlaneCPU()-apiCPU
	settle()
	report("memory of a replica started with the keys", fmt.Sprintf("%.1f MiB RSS", rssMiB(fresh.Process.Pid)),
		fmt.Sprintf("%d keys loaded in %s (CPU: the replica %s, API server and etcd %s); Go heap in use %.1f MiB; peak %.1f MiB while loading", *keysTotal,
			took.Round(100*time.Millisecond), replicaCPU.Round(100*time.Millisecond), apiCPU.Round(100*time.Millisecond),
			heapInUseMiB("http://127.0.0.1:8292"), hwmMiB(fresh.Process.Pid)))
	stop(fresh)

	// Keys with limits they never reach (every check goes through the
	// bucket and the quota, and gets the RateLimit headers), created
	// alternately with as many keys without: the two halves lie alike in
	// the index, so the forward-auth runs compare like with like.
	rps, burst, perDay := int32(1_000_000), int32(10_000_000), int64(10_000_000_000)
	pair, err := createKeys(ctx, c, "bench-limited", 0, 2*limitedKeys, func(i int) *kw.Limits {
		if i%2 == 1 {
			return nil
		}
		return &kw.Limits{RequestsPerSecond: &rps, Burst: &burst, RequestsPerDay: &perDay}
	})
	if err != nil {
		return err
	}
	var limited, unlimited []string
	for i, tok := range pair {
		if i%2 == 0 {
			limited = append(limited, tok)
		} else {
			unlimited = append(unlimited, tok)
		}
	}
	if err := waitReady("http://127.0.0.1:8091/readyz", *keysTotal+2*limitedKeys, pair[len(pair)-1]); err != nil {
		return err
	}

	noop, err := start(filepath.Join(*bin, "bench-noop"), "--pprof-address", "127.0.0.1:9190")
	if err != nil {
		return err
	}
	defer stop(noop)
	time.Sleep(300 * time.Millisecond)

	tokFile := filepath.Join(dir, "tokens")
	sample := tokens[:min(len(tokens), 10000)]
	if err := os.WriteFile(tokFile, []byte(strings.Join(sample, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	limitedFile, unlimitedFile := filepath.Join(dir, "limited-tokens"), filepath.Join(dir, "unlimited-tokens")
	if err := os.WriteFile(limitedFile, []byte(strings.Join(limited, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(unlimitedFile, []byte(strings.Join(unlimited, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	say("forward auth under wrk: %d connections, %d rounds of %s on each of keyward and two no-op servers", *conns, *rounds, *duration)
	// The baseline is the plainest Go HTTP server (net/http, an
	// empty handler); the second, keyward's own HTTP server (fasthttp) with
	// an empty handler, shows what the check itself costs.
	type target struct {
		url, pprof, profile string
		pid                 int
		tokens              string
		runs                []wrkResult
	}
	netNoop := &target{url: "http://127.0.0.1:9180", pprof: "http://127.0.0.1:9190", profile: *profile + ".noop", pid: noop.Process.Pid, tokens: tokFile}
	fastNoop := &target{url: "http://127.0.0.1:9182", pprof: "http://127.0.0.1:9190", profile: *profile + ".fastnoop", pid: noop.Process.Pid, tokens: tokFile}
	kwT := &target{url: "http://127.0.0.1:8180", pprof: "http://127.0.0.1:8092", profile: *profile, pid: authn.Process.Pid, tokens: tokFile}
	// The same endpoint checking keys with limits (issue 16: ≥ 95 % of the
	// throughput without).
	kwLim := &target{url: "http://127.0.0.1:8180", pprof: "http://127.0.0.1:8092", pid: authn.Process.Pid, tokens: limitedFile}
	kwPlain := &target{url: "http://127.0.0.1:8180", pprof: "http://127.0.0.1:8092", pid: authn.Process.Pid, tokens: unlimitedFile}
	targets := []*target{netNoop, kwT, fastNoop, kwLim, kwPlain}
	var httpRatios, fastRatios, cpuRatios, limRatios, limCPU, p99Ratios []float64
	for round := range *rounds {
		// Each round starts with another of the three: a drift in the
		// machine's speed within a round favours none of them.
		for i := range targets {
			t := targets[(round+i)%len(targets)]
			r, err := profiled(*profile != "" && t.profile != "" && round == 0, t.pprof, t.profile, func() (wrkResult, error) {
				return wrk(t.url, t.tokens, t.pid)
			})
			if err != nil {
				return err
			}
			if (t == kwT || t == kwLim || t == kwPlain) && r.non2xx > 0 {
				return fmt.Errorf("keyward answered %d requests with other than 200", r.non2xx)
			}
			t.runs = append(t.runs, r)
		}
		k, b, f := kwT.runs[round], netNoop.runs[round], fastNoop.runs[round]
		httpRatios = append(httpRatios, k.rps/b.rps)
		p99Ratios = append(p99Ratios, p99Ratio(k, b))
		fastRatios = append(fastRatios, k.rps/f.rps)
		cpuRatios = append(cpuRatios, f.cpuPerRequest()/k.cpuPerRequest())
		p := kwPlain.runs[round]
		limRatios = append(limRatios, kwLim.runs[round].rps/p.rps)
		limCPU = append(limCPU, p.cpuPerRequest()/kwLim.runs[round].cpuPerRequest())
	}
	bm, km, fm := median(netNoop.runs), median(kwT.runs), median(fastNoop.runs)
	report("no-op net/http server (median round)", fmt.Sprintf("%.0f req/s", bm.rps), "p99 "+bm.p99)
	report("no-op on keyward's HTTP server (median round)", fmt.Sprintf("%.0f req/s", fm.rps), "fasthttp, p99 "+fm.p99)
	report("keyward forward auth (median round)", fmt.Sprintf("%.0f req/s", km.rps), fmt.Sprintf("p99 %s; %d keys, every request verified", km.p99, *keysTotal))
	report("forward auth / no-op net/http", ratioText(httpRatios), "target ≥ 80%")
	report("forward auth / no-op on its own server", ratioText(fastRatios), "what the check itself costs")
	report(fmt.Sprintf("forward auth p99 at %d keys / no-op net/http p99", *keysTotal), timesText(p99Ratios), "per round; target ≤ 2×")
	lm, pm := median(kwLim.runs), median(kwPlain.runs)
	report("forward auth, keys with limits (median round)", fmt.Sprintf("%.0f req/s", lm.rps),
		fmt.Sprintf("p99 %s; %d keys with a rate and a quota they never reach, RateLimit headers on every answer", lm.p99, limitedKeys))
	report("forward auth, as many keys without (median round)", fmt.Sprintf("%.0f req/s", pm.rps),
		fmt.Sprintf("p99 %s; created alternately with them", pm.p99))
	report("forward auth with limits / without", ratioText(limRatios), "target ≥ 95%")
	report("forward auth CPU per request, without limits / with", ratioText(limCPU),
		fmt.Sprintf("%.1f µs with limits; the same ratio by the endpoint's own CPU time, steadier than throughput on a shared machine", medianOf(cpuOf(kwLim.runs))))
	report("forward auth CPU per request", fmt.Sprintf("%.1f µs (no-op on its server %.1f µs, net/http %.1f µs)",
		medianOf(cpuOf(kwT.runs)), medianOf(cpuOf(fastNoop.runs)), medianOf(cpuOf(netNoop.runs))),
		"server CPU time over requests served; no-op/keyward "+ratioText(cpuRatios))

	say("gRPC Check: %d concurrent callers, %d rounds of %s each", *conns, *rounds, *duration)
	var grpcRatios, gb, gk []float64
	for range *rounds {
		b, err := grpcLoad("127.0.0.1:9181", sample)
		if err != nil {
			return err
		}
		k, err := grpcLoad("127.0.0.1:8181", sample)
		if err != nil {
			return err
		}
		gb, gk = append(gb, b), append(gk, k)
		grpcRatios = append(grpcRatios, k/b)
	}
	report("no-op ext_authz server (median round)", fmt.Sprintf("%.0f checks/s", medianOf(gb)), "")
	report("keyward ext_authz Check (median round)", fmt.Sprintf("%.0f checks/s", medianOf(gk)), "")
	report("gRPC Check / no-op", ratioText(grpcRatios), "target ≥ 70%")
	report("endpoint peak memory", fmt.Sprintf("%.1f MiB", hwmMiB(authn.Process.Pid)), "VmHWM after all runs")
	return hostileLoad(kwT.url, tokFile, authn.Process.Pid)
}

// hostileLoad measures valid-key traffic alone and beside 5,000 idle
// keep-alive connections, 200 connections that never finish their headers
// and a flood of invalid keys, in pairs of runs made one after the other
// (the attack opened before the second and closed after it), so the
// machine's drift cancels as in the runs above; and the endpoint's memory
// for it. The attackers run in this process, on the load CPU beside wrk:
// the CPU use of the server and of wrk tells which side was the limit.
func hostileLoad(url, tokFile string, pid int) error {
	const idleN, slowN, floodRate = 5000, 200, 5000
	say("hostile load: %d rounds of valid keys alone, then beside %d idle connections, %d slow-header connections and %d invalid keys/s",
		*rounds, idleN, slowN, floodRate)
	busy := func(r wrkResult) string {
		return fmt.Sprintf("server CPU %.0f%%, wrk CPU %.0f%%", 100*r.cpu.Seconds()/duration.Seconds(),
			100*r.load.Seconds()/duration.Seconds())
	}
	var quiet, under []wrkResult
	var ratios []float64
	var perIdle, perSlow float64
	var flooded, reopened int64
	for round := range *rounds {
		q, err := wrk(url, tokFile, pid)
		if err != nil {
			return err
		}
		if round == 0 {
			settle()
		}
		before := rssMiB(pid)
		h := newHostile(strings.TrimPrefix(url, "http://"))
		if err := h.openIdle(idleN); err != nil {
			h.close()
			return err
		}
		if round == 0 {
			settle()
		}
		withIdle := rssMiB(pid)
		h.slowHeaders(slowN)
		time.Sleep(time.Second)
		if round == 0 {
			settle()
			perIdle = (withIdle - before) * 1024 / idleN
			perSlow = (rssMiB(pid) - withIdle) * 1024 / slowN
		}
		h.flood(floodRate)
		time.Sleep(500 * time.Millisecond)
		sent := h.flooded.Load()
		u, err := wrk(url, tokFile, pid)
		flooded += h.flooded.Load() - sent
		reopened += h.slowNew.Load() - slowN
		h.close()
		if err != nil {
			return err
		}
		if u.non2xx > 0 {
			return fmt.Errorf("under hostile load %d valid checks were not answered 200", u.non2xx)
		}
		quiet, under = append(quiet, q), append(under, u)
		ratios = append(ratios, u.rps/q.rps)
		time.Sleep(time.Second) // the server closes the attackers' connections
	}
	q, u := median(quiet), median(under)
	report("valid checks alone (median round)", fmt.Sprintf("%.0f req/s", q.rps), "p99 "+q.p99+"; "+busy(q))
	report("valid checks under hostile load (median round)", fmt.Sprintf("%.0f req/s", u.rps),
		fmt.Sprintf("p99 %s; %s; beside %d idle and %d slow-header connections (%d reopened after the 5 s read timeout) and %d invalid keys/s (%d answered in the runs)",
			u.p99, busy(u), idleN, slowN, reopened, floodRate, flooded))
	report("under hostile load / alone", ratioText(ratios), "target ≥ 80%")
	report("memory per idle connection", fmt.Sprintf("%.1f KiB", perIdle), fmt.Sprintf("RSS growth over %d idle keep-alive connections; target < 10 KiB", idleN))
	report("memory per slow-header connection", fmt.Sprintf("%.1f KiB", perSlow), fmt.Sprintf("RSS growth over %d; target < 10 KiB", slowN))
	report("endpoint peak memory under hostile load", fmt.Sprintf("%.1f MiB", hwmMiB(pid)), "VmHWM; shipped limit 320 MiB (config/manager/authn.yaml)")
	return nil
}

// profiled runs load and, when on, takes a CPU profile of the server at
// base meanwhile, for all but the last second of the run.
func profiled(on bool, base, path string, load func() (wrkResult, error)) (wrkResult, error) {
	if !on {
		return load()
	}
	prof := make(chan error, 1)
	secs := max(1, int(duration.Seconds())-1) // within the load run
	go func() { prof <- fetch(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs), path) }()
	r, err := load()
	if perr := <-prof; err == nil {
		err = perr
	}
	return r, err
}

func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func say(format string, args ...any) { fmt.Printf(">> "+format+"\n", args...) }

// createKeys creates ApiKeys with records directly (no controller: the
// bench measures the endpoint), from index from to to, and returns tokens.
// noLimits gives every key no limits.
func noLimits(int) *kw.Limits { return nil }

func createKeys(ctx context.Context, c client.Client, ns string, from, to int, limits func(i int) *kw.Limits) ([]string, error) {
	// Creating the keys is the API server's and etcd's work, not what is
	// measured: let them use both CPUs meanwhile, then pin them back.
	pinChildren(loadCPU + "," + serverCPU)
	defer pinChildren(loadCPU)
	if from == 0 {
		// Its keys hold a write scope (bench:write), which the default
		// ApiKeyPolicy allows only in namespaces labelled so.
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"keyward.dev/write-access": "true"}}}); err != nil {
			return nil, err
		}
	}
	tokens := make([]string, to-from)
	err := parallel(to-from, func(j int) error {
		i := from + j
		k, _ := keys.Generate()
		name := fmt.Sprintf("k%06d", i)
		ak := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"bench:read", "bench:write"}, Limits: limits(i)}}
		if err := c.Create(ctx, ak); err != nil {
			return err
		}
		// The endpoint serves a record only while its ApiKey controls it,
		// as the controller writes it.
		rec := &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, OwnerReferences: ownedBy(ak)},
			Spec: kw.ApiKeyRecordSpec{Keys: []kw.RecordedKey{{KeyID: k.ID, Digest: k.Digest(), IssuedAt: metav1.Now()}}}}
		if err := c.Create(ctx, rec); err != nil {
			return err
		}
		tokens[j] = k.Token()
		if n := i + 1; n%20000 == 0 {
			say("   %d keys", n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tokens, nil
}

// childPID is the pid of this process's child named name (etcd,
// kube-apiserver), or 0.
func childPID(name string) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		pid := filepath.Base(filepath.Dir(st))
		n, f := procStat(pid)
		if n == name && len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			p, _ := strconv.Atoi(pid)
			return p
		}
	}
	return 0
}

// startControlPlane starts envtest's API server and etcd, with the
// --control-plane-env variables in their environment (they inherit this
// process's).
func startControlPlane() (*envtest.Environment, *rest.Config, error) {
	var set []string
	for _, kv := range strings.Split(*cpEnv, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if err := os.Setenv(k, v); err != nil {
				return nil, nil, err
			}
			set = append(set, k)
		}
	}
	defer func() {
		for _, k := range set {
			_ = os.Unsetenv(k)
		}
	}()
	return testenv.StartFsync(*etcdFsync)
}

// controlPlanePIDs are this process's API server and etcd, those running.
func controlPlanePIDs() []int {
	var pids []int
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if pid := childPID(name); pid != 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// controlPlaneCPU is the CPU time this process's API server and etcd have
// used.
func controlPlaneCPU() (d time.Duration) {
	for _, pid := range controlPlanePIDs() {
		d += cpuTime(pid)
	}
	return d
}

// niceChildren sets the nice value of every thread of this process's API
// server and etcd (threads they start later inherit it).
func niceChildren(n int) {
	for _, pid := range controlPlanePIDs() {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/[0-9]*", pid))
		for _, task := range tasks {
			tid, _ := strconv.Atoi(filepath.Base(task))
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, n); err != nil {
				fmt.Fprintf(os.Stderr, "bench: nice %d process %d thread %d: %v\n", n, pid, tid, err)
			}
		}
	}
}

// pinChildren pins this process's API server and etcd to cpus (not the
// endpoints it started, which stay where start put them).
func pinChildren(cpus string) {
	for _, pid := range controlPlanePIDs() {
		if out, err := exec.Command("taskset", "-apc", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: pin %d to CPUs %s: %v %s\n", pid, cpus, err, out)
		}
	}
}

// start runs a server pinned to the second CPU with one Go processor; the
// load generators run on the first. Keyward and the baseline get exactly
// the same machine, and neither competes with its load generator.
func start(path string, args ...string) (*exec.Cmd, error) { return startWith(nil, path, args...) }

// startWith is start with more environment variables.
func startWith(env []string, path string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command("taskset", append([]string{"-c", serverCPU, path}, args...)...)
	cmd.Env = append(append(os.Environ(), "GOMAXPROCS=1"), env...)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (run 'make bench', which builds it)", path, err)
	}
	return cmd, nil
}

// stop ends a server with SIGTERM: a process started from a background job
// inherits SIGINT ignored.
func stop(cmd *exec.Cmd) { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }

// waitReady waits for readiness and for the last key created to verify.
func waitReady(readyz string, n int, last string) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(readyz); err == nil {
			resp.Body.Close()
			// Ready means the first list is loaded; last, when given, is a key
			// added later that must verify on the endpoint at :8180.
			if resp.StatusCode == 200 && (last == "" || check(last) == 200) {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the endpoint did not load %d keys in 5 minutes", n)
}

const serverCPU, loadCPU = "1", "0"

var httpc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}

func check(token string) int {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:8180/authn", nil)
	req.Header.Set("x-api-key", token)
	resp, err := httpc.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// revocation archives the keys named k%06d from first on, whose tokens are
// archive, one by one, while wrk sends the keys load at the endpoint, and
// reports how long each took from sending the PATCH: until the API server
// answered, and until the endpoint (process endpoint) first answered 401.
// ahead runs the API server and etcd at nice -10 meanwhile.
func revocation(ctx context.Context, c client.Client, endpoint, first int, archive, load []string, dir string, ahead bool) error {
	// Under load: wrk sends the keys that stay valid at the endpoint while
	// the archivals are made (as in production, revocation competes with
	// checks for the endpoint's CPU).

	// Measured in the steady state: after creating thousands of keys the
	// API server and etcd work on for a while (writing the watch cache,
	// collecting garbage, compacting), and a revocation then would time
	// that digestion, not the archival.
	quiet, waited := 0.0, time.Now()
	for time.Since(waited) < 2*time.Minute {
		c0 := controlPlaneCPU()
		time.Sleep(time.Second)
		if quiet = 100 * (controlPlaneCPU() - c0).Seconds(); quiet < 10 {
			break
		}
	}
	settled := fmt.Sprintf("started once they were %.0f %% busy, after %s", quiet, time.Since(waited).Round(time.Second))
	tokFile := filepath.Join(dir, "revocation-load")
	if err := os.WriteFile(tokFile, []byte(strings.Join(load, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	wrk := exec.Command("taskset", "-c", loadCPU, "wrk", "-t1", "-c8", "-d10m", "-s", filepath.Join("test", "bench", "tokens.lua"),
		"http://127.0.0.1:8180")
	wrk.Env = append(os.Environ(), "KW_TOKENS="+tokFile)
	if err := wrk.Start(); err != nil {
		return err
	}
	defer func() { _ = wrk.Process.Kill(); _ = wrk.Wait() }()
	if ahead {
		niceChildren(-10)
		defer niceChildren(0)
	}
	time.Sleep(time.Second)
	cpu0, cpuAPI0, began := cpuTime(endpoint), controlPlaneCPU(), time.Now()

	call := make([]time.Duration, 0, len(archive))
	total := make([]time.Duration, 0, len(archive))
	for i, token := range archive {
		if code := check(token); code != 200 {
			return fmt.Errorf("key %d does not verify before archival: %d", first+i, code)
		}
		// The call a user makes: kubectl patch --type merge, no read first.
		key := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("k%06d", first+i)}}
		sent := time.Now()
		if err := c.Patch(ctx, key, archivePatch); err != nil {
			return err
		}
		call = append(call, time.Since(sent))
		for check(token) != 401 {
			if time.Since(sent) > 10*time.Second {
				return fmt.Errorf("key %d still verifies 10s after archival", first+i)
			}
		}
		total = append(total, time.Since(sent))
	}
	took := time.Since(began).Seconds()
	busy := 100 * (cpuTime(endpoint) - cpu0).Seconds() / took
	busyAPI := 100 * (controlPlaneCPU() - cpuAPI0).Seconds() / took
	slices.Sort(call)
	slices.Sort(total)
	q := func(d []time.Duration, p int) string { return d[len(d)*p/100].Round(10 * time.Microsecond).String() }
	loaded := *revokeKeys
	if first >= *revokeKeys {
		loaded = *keysTotal
	}
	prio, at := "API server and etcd at wrk's priority", fmt.Sprintf(" (%dk keys)", loaded/1000)
	if ahead {
		prio, at = "API server and etcd at nice -10", fmt.Sprintf(" (%dk keys, control plane first)", loaded/1000)
	}
	report("archive call (PATCH), p50 / p99"+at, q(call, 50)+" / "+q(call, 99),
		fmt.Sprintf("%d archivals, %d keys loaded, admission policies installed, %s; they used %.0f %% of a CPU (%s)", len(archive), loaded, prio, busyAPI, settled))
	report("revocation from the call, p50 / p99"+at, q(total, 50)+" / "+q(total, 99),
		fmt.Sprintf("from sending the PATCH to the endpoint's first 401, the endpoint under load (its CPU %.0f %% busy); target p99 ≤ 20 ms", busy))
	return nil
}

// archivePatch is the archival as the README's tour makes it.
var archivePatch = client.RawPatch(types.MergePatchType, []byte(`{"spec":{"archived":true}}`))

type wrkResult struct {
	rps      float64
	p99      string
	non2xx   int
	requests int
	// cpu is the CPU time the server used during the run; load is wrk's.
	cpu, load time.Duration
}

// cpuPerRequest is the server's CPU time per request served, in µs: unlike
// a rate, other work on the machine barely moves it.
func (r wrkResult) cpuPerRequest() float64 {
	return float64(r.cpu.Microseconds()) / float64(max(r.requests, 1))
}

func cpuOf(rs []wrkResult) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = r.cpuPerRequest()
	}
	return out
}

var (
	rpsRe      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	p99Re      = regexp.MustCompile(`\s99%\s+(\S+)`)
	non2xxRe   = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	requestsRe = regexp.MustCompile(`(\d+) requests in`)
)

// wrk loads url and measures the CPU time of the server pid meanwhile.
func wrk(url, tokFile string, pid int) (wrkResult, error) {
	cmd := exec.Command("taskset", "-c", loadCPU, "wrk", "-t1", fmt.Sprintf("-c%d", *conns), "-d"+duration.String(), "--latency",
		"-s", filepath.Join("test", "bench", "tokens.lua"), url)
	cmd.Env = append(os.Environ(), "KW_TOKENS="+tokFile)
	cpu0 := cpuTime(pid)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	r := wrkResult{cpu: cpuTime(pid) - cpu0, load: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	m := rpsRe.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk's output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := p99Re.FindSubmatch(out); m != nil {
		r.p99 = string(m[1])
	}
	if m := non2xxRe.FindSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(string(m[1]))
	}
	if m := requestsRe.FindSubmatch(out); m != nil {
		r.requests, _ = strconv.Atoi(string(m[1]))
	}
	return r, nil
}

// cpuTime is the user and system CPU time a process has used
// (/proc/PID/stat, in clock ticks of 10 ms).
func cpuTime(pid int) time.Duration {
	_, f := procStat(strconv.Itoa(pid))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procStat reads /proc/PID/stat: the command name, and the fields after it
// (the name may hold spaces), from the state on.
func procStat(pid string) (name string, fields []string) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if err != nil || open < 0 || end < open {
		return "", nil
	}
	return string(b[open+1 : end]), strings.Fields(string(b[end+1:]))
}

// median is the run with the median throughput.
func median(rs []wrkResult) wrkResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b wrkResult) int { return cmpFloat(a.rps, b.rps) })
	return s[len(s)/2]
}

func medianOf(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ratioText is the median of the per-round ratios (each round pairs runs
// made next to each other in time), with their range: the machine's noise
// moves both sides of a round together.
func ratioText(rs []float64) string {
	return fmt.Sprintf("%.1f%% (rounds %.1f–%.1f%%)", 100*medianOf(rs), 100*slices.Min(rs), 100*slices.Max(rs))
}

// p99Ratio is a run's p99 latency over another's, as wrk printed them
// ("1.54ms", "950.00us"); 0 when either cannot be read.
func p99Ratio(a, b wrkResult) float64 {
	x, errA := time.ParseDuration(a.p99)
	y, errB := time.ParseDuration(b.p99)
	if errA != nil || errB != nil || y == 0 {
		return 0
	}
	return float64(x) / float64(y)
}

// timesText is the median and range of per-round ratios, as multiples.
func timesText(rs []float64) string {
	return fmt.Sprintf("%.2f× (rounds %.2f–%.2f×)", medianOf(rs), slices.Min(rs), slices.Max(rs))
}

// grpcLoad calls Check from conns goroutines over 4 connections for the
// run's duration and returns checks per second.
func grpcLoad(addr string, tokens []string) (float64, error) {
	var clients []authv3.AuthorizationClient
	for range 4 {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		clients = append(clients, authv3.NewAuthorizationClient(conn))
	}
	// The calls themselves get no deadline (gRPC would report the end of the
	// run as DeadlineExceeded); the run stops when stop is closed.
	ctx := context.Background()
	stopped := make(chan struct{})
	time.AfterFunc(*duration, func() { close(stopped) })
	done := func() bool {
		select {
		case <-stopped:
			return true
		default:
			return false
		}
	}
	var n, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w%len(clients)]
			for i := w; !done(); i++ {
				req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
					Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
						Method: "GET", Path: "/v1/bench", Headers: map[string]string{"x-api-key": tokens[i%len(tokens)]},
					}},
					ContextExtensions: map[string]string{"scopes": "bench:read"},
				}}
				resp, err := c.Check(ctx, req)
				if err != nil || resp.GetStatus().GetCode() != 0 {
					if failed.Add(1) == 1 {
						firstErr.Store(fmt.Sprintf("%v %v", err, resp.GetStatus()))
					}
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return 0, fmt.Errorf("%d checks against %s failed or were denied; the first: %v", f, addr, firstErr.Load())
	}
	return float64(n.Load()) / duration.Seconds(), nil
}

func procStatus(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), field+":") {
			kb, _ := strconv.Atoi(strings.Fields(s.Text())[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// heapInUseMiB reads HeapInuse from a process's pprof heap summary (its
// /metrics answers only authorized tokens).
func heapInUseMiB(pprofBase string) float64 {
	resp, err := http.Get(pprofBase + "/debug/pprof/heap?debug=1")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		if f := strings.Fields(s.Text()); len(f) == 4 && f[0] == "#" && f[1] == "HeapInuse" {
			v, _ := strconv.ParseFloat(f[3], 64)
			return v / (1 << 20)
		}
	}
	return 0
}

func rssMiB(pid int) float64 { return procStatus(pid, "VmRSS") }
func hwmMiB(pid int) float64 { return procStatus(pid, "VmHWM") }

// peakAnonMiB samples a process's anonymous memory (RssAnon: what a
// container's memory limit cannot reclaim, unlike the pages of its
// mapped binary) every 50 ms until stopped, and returns the largest.
func peakAnonMiB(pid int) (stop func() float64) {
	done, peak := make(chan struct{}), make(chan float64)
	go func() {
		most := 0.0
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			most = max(most, procStatus(pid, "RssAnon"))
			select {
			case <-done:
				peak <- most
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 { close(done); return <-peak }
}

// settle gives the endpoint a moment after loading before its memory is
// read.
func settle() { time.Sleep(3 * time.Second) }
