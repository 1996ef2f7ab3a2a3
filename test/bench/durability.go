package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

var (
	etcdFsync = flag.Bool("etcd-fsync", false, "run every phase's etcd with fsync, as a production etcd runs (envtest starts it with --unsafe-no-fsync)")
	durRounds = flag.Int("durability-rounds", 3, "rounds of the durability phase, each timing --revocations archivals with etcd without and with fsync")
)

// durabilityRun times the archive PATCH (the call a revocation waits for)
// on an idle API server with keyward's admission policies, etcd once as
// envtest runs it and once syncing its disk as in production, alternating,
// in fresh control planes: what the other phases' revocation figures
// leave out (docs/benchmarks.md).
func durabilityRun() error {
	say("durability: %d rounds of %d archive PATCHes on an idle API server, etcd without and with fsync", *durRounds, *revocations)
	var p50, p99 [2][]float64
	for round := range *durRounds {
		for i, fsync := range []bool{false, true} {
			d, syncs, err := archivePatches(fsync, *revocations)
			if err != nil {
				return err
			}
			// etcd's own count of its WAL syncs says which way it ran.
			if fsync != (syncs > 0) {
				return fmt.Errorf("etcd synced its WAL %d times with fsync %v", syncs, fsync)
			}
			slices.Sort(d)
			n := len(d)
			p50[i] = append(p50[i], ms(d[n/2]))
			p99[i] = append(p99[i], ms(d[min(n*99/100, n-1)]))
			say("   round %d, fsync %v: p50 %.2f ms, p99 %.2f ms (etcd synced its WAL %d times)", round+1, fsync,
				ms(d[n/2]), ms(d[min(n*99/100, n-1)]), syncs)
		}
	}
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	report("archive PATCH, idle, etcd as envtest runs it", fmt.Sprintf("%.1f / %.1f ms", med(p50[0]), med(p99[0])),
		fmt.Sprintf("p50 / p99, median of %d rounds of %d; no fsync (--unsafe-no-fsync), as the other phases run without --etcd-fsync", *durRounds, *revocations))
	report("archive PATCH, idle, etcd with fsync", fmt.Sprintf("%.1f / %.1f ms", med(p50[1]), med(p99[1])),
		fmt.Sprintf("p50 / p99, same rounds; as a production etcd writes (on this machine's disk): %+.1f / %+.1f ms",
			med(p50[1])-med(p50[0]), med(p99[1])-med(p99[0])))
	return nil
}

// archivePatches starts a control plane, creates n ApiKeys and times
// archiving each with the merge patch kubectl patch sends. It returns the
// times and how many times etcd synced its write-ahead log meanwhile.
func archivePatches(fsync bool, n int) ([]time.Duration, int, error) {
	env, cfg, err := testenv.StartFsync(fsync)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = env.Stop() }()
	ctx := context.Background()
	c, err := client.New(cfg, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return nil, 0, err
	}
	for _, d := range []string{"admission", "policy"} {
		if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", d)); err != nil {
			return nil, 0, err
		}
	}
	if _, err := app.AdmissionInEffect(ctx, c, metav1.NamespaceDefault, time.Minute); err != nil {
		return nil, 0, err
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "durability"}}); err != nil {
		return nil, 0, err
	}
	key := func(i int) *kw.ApiKey {
		return &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "durability", Name: fmt.Sprintf("key-%d", i)},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"occupancy:read"}}}
	}
	for i := range n {
		if err := c.Create(ctx, key(i)); err != nil {
			return nil, 0, err
		}
	}
	settle()
	etcd := env.ControlPlane.Etcd.URL.String() + "/metrics"
	syncs0, err := walSyncs(etcd)
	if err != nil {
		return nil, 0, err
	}
	d := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		if err := c.Patch(ctx, key(i), archivePatch); err != nil {
			return nil, 0, err
		}
		d = append(d, time.Since(start))
	}
	syncs, err := walSyncs(etcd)
	return d, syncs - syncs0, err
}

// walSyncs is etcd's count of write-ahead-log syncs, from its metrics.
func walSyncs(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "etcd_disk_wal_fsync_duration_seconds_count "); ok {
			return strconv.Atoi(v)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no etcd_disk_wal_fsync_duration_seconds_count in %s", url)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
