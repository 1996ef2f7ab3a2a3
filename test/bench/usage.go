package main

// The usage phase (issue 18): the controller's real UsageCollector, on a
// real API server holding the ApiKeys, collects from stand-in endpoint
// replicas (each a real index and usage.Reporter behind an HTTP server,
// counting what a load generator tells it), with traffic on a tenth of the
// keys each round. Measured: bytes a round, status writes a second, the
// collector process's CPU and heap, how long after the traffic stops every
// figure is right, and whether every call is counted exactly once.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/testenv"
	"keyward.dev/keyward/internal/usage"
)

// countingTransport counts the bytes of the answers it carries.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func usageRun() error {
	const replicas, rounds = 10, 12
	n := *usageKeys
	interval := controllers.DefaultUsageInterval
	say("usage: %d ApiKeys, %d replicas, traffic on a tenth of the keys, rounds of %s, %d rounds", n, replicas, interval, rounds)
	env, cfg, err := testenv.StartFsync(*etcdFsync)
	if err != nil {
		return err
	}
	defer env.Stop()
	cfg.QPS, cfg.Burst = -1, 1000
	c, err := client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "usage"}}); err != nil {
		return err
	}
	ids := make([]string, n)
	if err := parallel(n, func(i int) error {
		k, _ := keys.Generate()
		ids[i] = k.ID
		return c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "usage", Name: fmt.Sprintf("u%07d", i)},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"a"}}})
	}); err != nil {
		return err
	}

	// The replicas: every key in each index, as a Service's replicas have.
	type replica struct {
		ix  *index.Index
		ids []index.Identity
	}
	var reps []replica
	var urls []string
	for r := range replicas {
		ix := index.New()
		rep := replica{ix: ix, ids: make([]index.Identity, n)}
		for i, id := range ids {
			nn := types.NamespacedName{Namespace: "usage", Name: fmt.Sprintf("u%07d", i)}
			uid := types.UID(fmt.Sprintf("uid-%d", i))
			k, _ := keys.Generate()
			ix.SetApiKey(nn, &index.ApiKey{UID: uid, Scopes: []string{"a"}})
			ix.SetRecord(nn, &index.Record{Owner: uid, Keys: []index.Key{{ID: id, Digest: k.Digest()}}})
			e, _ := ix.Lookup(id)
			rep.ids[i] = e.Identity
		}
		ix.MarkSynced()
		srv := httptest.NewServer((&usage.Reporter{Index: ix, Replica: fmt.Sprintf("bench-%d", r)}).Handler())
		defer srv.Close()
		reps = append(reps, rep)
		urls = append(urls, srv.URL)
	}

	// The collector, reading ApiKeys from a cache as the controller does.
	ca, err := cache.New(cfg, cache.Options{Scheme: controllers.NewScheme(), DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		return err
	}
	go func() { _ = ca.Start(ctx) }()
	if !ca.WaitForCacheSync(ctx) {
		return fmt.Errorf("cache did not sync")
	}
	cc, err := client.New(cfg, client.Options{Scheme: controllers.NewScheme(), Cache: &client.CacheOptions{Reader: ca}})
	if err != nil {
		return err
	}
	transport := &countingTransport{}
	uc := &controllers.UsageCollector{Client: cc, Endpoints: controllers.StaticEndpoints(urls...), Interval: interval,
		Transport: transport, Log: logr.Discard()}
	before, err := apiserverRequests(ctx, cfg)
	if err != nil {
		return err
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	go func() { _ = uc.Start(ctx) }()

	// Traffic on a tenth of the keys (issue 18), the same tenth all along:
	// each round, each replica counts as many calls as there are such keys,
	// spread over them at random.
	counted := make([]int64, n)
	rng := rand.New(rand.NewPCG(1, 2))
	active := rng.Perm(n)[:max(n/10, 1)]
	start := time.Now()
	var peakHeap uint64
	for round := range rounds {
		for _, rep := range reps {
			for range len(active) {
				i := active[rng.IntN(len(active))]
				rep.ix.Count(rep.ids[i], index.Allowed, time.Now())
				counted[i]++
			}
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peakHeap = max(peakHeap, ms.HeapInuse)
		time.Sleep(time.Until(start.Add(time.Duration(round+1) * interval)))
	}
	stopped := time.Now()
	var total int64
	for _, x := range counted {
		total += x
	}
	// Until every figure is right: the oldest a figure gets.
	var wrong int
	for {
		var list kw.ApiKeyList
		if err := c.List(ctx, &list, client.InNamespace("usage")); err != nil {
			return err
		}
		wrong = 0
		var shown int64
		for _, k := range list.Items {
			var got int64
			if k.Status.Usage != nil {
				got = k.Status.Usage.Last24h
			}
			shown += got
			var i int
			_, _ = fmt.Sscanf(k.Name, "u%07d", &i)
			if got != counted[i] {
				wrong++
			}
			if got > counted[i] {
				return fmt.Errorf("%s shows %d calls, %d were made", k.Name, got, counted[i])
			}
		}
		if wrong == 0 || time.Since(stopped) > 15*time.Minute {
			break
		}
		time.Sleep(time.Second)
	}
	converged := time.Since(stopped)
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	after, err := apiserverRequests(ctx, cfg)
	if err != nil {
		return err
	}
	writes := after["PATCH apikeys/status"] - before["PATCH apikeys/status"]
	elapsed := time.Since(start)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	collections := float64(int(elapsed/interval) * replicas)
	report("usage: bytes per replica per round", fmt.Sprintf("%.0f KB", float64(transport.n.Load())/collections/1024),
		fmt.Sprintf("%d keys, traffic on a tenth of them (protocol 1 sent every key ever used: ~130 B each)", n))
	report("usage: status writes", fmt.Sprintf("%.0f in %s", writes, elapsed.Round(time.Second)),
		fmt.Sprintf("%.0f a second; budget %d a second", writes/elapsed.Seconds(), controllers.DefaultUsageWritesPerSecond))
	report("usage: every figure right", fmt.Sprintf("%s after the traffic stopped", converged.Round(time.Second)),
		fmt.Sprintf("%d calls; %d keys still off", total, wrong))
	report("usage: collector process", fmt.Sprintf("%.1f s CPU, %.0f MiB heap", cpu.Seconds(), float64(peakHeap)/(1<<20)),
		fmt.Sprintf("over %s; includes the %d stand-in replicas and the load", elapsed.Round(time.Second), replicas))
	if wrong > 0 {
		return fmt.Errorf("%d keys' figures still differ from the calls made %s after the traffic stopped", wrong, converged)
	}
	return nil
}
