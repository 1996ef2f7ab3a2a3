package main

// The scale phase (issue 17): checks against an index of 1,000,000 keys
// next to an index of 10, on the same server, and what the million costs in
// memory and in start-up. Both are bench-inproc processes: the keys are
// made in process, since this machine cannot hold a million ApiKeys and
// their records in etcd (the endpoint phase loads 100,000 through the real
// API server).

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

var scaleKeys = []int{10, 1_000_000}

func scaleRun() error {
	dir, err := os.MkdirTemp("", "keyward-bench-scale")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	type server struct {
		keys           int
		url, pprof     string
		tokens         string
		cmd            *exec.Cmd
		pid            int
		ready          time.Duration
		runs           []wrkResult
		heap, rss, hwm float64
	}
	var servers []*server
	defer func() {
		for _, s := range servers {
			stop(s.cmd)
		}
	}()
	for i, n := range scaleKeys {
		s := &server{keys: n, url: fmt.Sprintf("http://127.0.0.1:%d", 8380+i), pprof: fmt.Sprintf("http://127.0.0.1:%d", 8390+i),
			tokens: filepath.Join(dir, fmt.Sprintf("tokens-%d", n))}
		say("bench-inproc with %d keys", n)
		began := time.Now()
		cmd, err := start(filepath.Join(*bin, "bench-inproc"), "--keys", fmt.Sprint(n), "--tokens", s.tokens,
			"--http-address", s.url[len("http://"):], "--debug-address", s.pprof[len("http://"):])
		if err != nil {
			return err
		}
		s.cmd, s.pid = cmd, cmd.Process.Pid
		servers = append(servers, s)
		// Ready: it answers a check (it writes the tokens once its index
		// is full, and serves right after).
		deadline := time.Now().Add(5 * time.Minute)
		for {
			if b, err := os.ReadFile(s.tokens); err == nil && len(b) > 0 {
				req, _ := http.NewRequest("GET", s.url+"/authn?scope=bench:read", nil)
				req.Header.Set("X-Api-Key", strings.SplitN(string(b), "\n", 2)[0])
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						return fmt.Errorf("bench-inproc with %d keys refused one of its keys: %d", n, resp.StatusCode)
					}
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("bench-inproc with %d keys did not serve in 5 minutes", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.ready = time.Since(began)
		settle()
		s.heap, s.rss, s.hwm = heapInUseMiB(s.pprof), rssMiB(s.pid), hwmMiB(s.pid)
	}
	small, big := servers[0], servers[len(servers)-1]
	// The latency baseline, in the same rounds: an empty handler on
	// net/http, pinned as the servers are.
	noopCmd, err := start(filepath.Join(*bin, "bench-noop"), "--http-address", "127.0.0.1:8385",
		"--grpc-address", "127.0.0.1:8386", "--fasthttp-address", "127.0.0.1:8387")
	if err != nil {
		return err
	}
	defer stop(noopCmd)
	time.Sleep(300 * time.Millisecond)
	noop := &server{url: "http://127.0.0.1:8385", tokens: small.tokens, cmd: noopCmd, pid: noopCmd.Process.Pid}
	targets := append(slices.Clone(servers), noop)
	say("forward auth under wrk: %d rounds of %s on each, and on a no-op net/http server", *rounds, *duration)
	var ratios, cpu, p99Small, p99Big []float64
	for round := range *rounds {
		for i := range targets {
			s := targets[(round+i)%len(targets)]
			r, err := wrk(s.url, s.tokens, s.pid)
			if err != nil {
				return err
			}
			if r.non2xx > 0 && s != noop {
				return fmt.Errorf("bench-inproc with %d keys answered %d requests with other than 200", s.keys, r.non2xx)
			}
			s.runs = append(s.runs, r)
		}
		ratios = append(ratios, big.runs[round].rps/small.runs[round].rps)
		cpu = append(cpu, small.runs[round].cpuPerRequest()/big.runs[round].cpuPerRequest())
		p99Small = append(p99Small, p99Ratio(small.runs[round], noop.runs[round]))
		p99Big = append(p99Big, p99Ratio(big.runs[round], noop.runs[round]))
	}
	sm, bm := median(small.runs), median(big.runs)
	report(fmt.Sprintf("forward auth, %d keys in the index (median round)", small.keys), fmt.Sprintf("%.0f req/s", sm.rps), "p99 "+sm.p99)
	report(fmt.Sprintf("forward auth, %d keys in the index (median round)", big.keys), fmt.Sprintf("%.0f req/s", bm.rps),
		"p99 "+bm.p99+"; 10,000 of its keys, spread over it, in turn")
	report(fmt.Sprintf("forward auth at %d keys / at %d", big.keys, small.keys), ratioText(ratios), "target ≥ 90%")
	report("no-op net/http server (median round)", fmt.Sprintf("%.0f req/s", median(noop.runs).rps), "p99 "+median(noop.runs).p99)
	report(fmt.Sprintf("forward auth p99 at %d keys / no-op net/http p99", small.keys), timesText(p99Small), "per round; target ≤ 2×")
	report(fmt.Sprintf("forward auth p99 at %d keys / no-op net/http p99", big.keys), timesText(p99Big), "per round")
	report("forward auth CPU per request, small index / large", ratioText(cpu),
		fmt.Sprintf("%.1f µs at %d keys, %.1f µs at %d", medianOf(cpuOf(big.runs)), big.keys, medianOf(cpuOf(small.runs)), small.keys))
	perKey := (big.heap - small.heap) * (1 << 20) / float64(big.keys-small.keys)
	report(fmt.Sprintf("in-process endpoint with %d keys: heap in use per key", big.keys), fmt.Sprintf("%.0f B", perKey),
		fmt.Sprintf("heap %.1f MiB against %.1f MiB at %d keys; the server's own buffers included", big.heap, small.heap, small.keys))
	report(fmt.Sprintf("in-process endpoint with %d keys: ready, memory", big.keys),
		fmt.Sprintf("ready in %s; %.1f MiB RSS, peak %.1f MiB (%.2f×)", big.ready.Round(100*time.Millisecond), big.rss, big.hwm, big.hwm/big.rss),
		"keys made in process (each a random key and its SHA-256), not listed from an API server; target ≤ 30 s, peak ≤ 1.5× steady")
	return nil
}
