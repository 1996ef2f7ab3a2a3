package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// limitedAnswer is what a client got through the gateway.
type limitedAnswer struct {
	code                          int
	reason                        string
	retryAfter, policy, rateLimit string
}

// load offers rate calls a second with token for d through url, from 8
// workers (a call that finds them all busy is not sent), and returns the
// answers.
func load(t *testing.T, url, token string, rate int, d time.Duration) []limitedAnswer {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}, Timeout: 5 * time.Second}
	ticks := make(chan struct{}, 8)
	var (
		mu  sync.Mutex
		out []limitedAnswer
		wg  sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			for range ticks {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("X-Api-Key", token)
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("GET %s: %v", url, err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var body struct{ Reason string }
				_ = json.Unmarshal(b, &body)
				a := limitedAnswer{code: resp.StatusCode, reason: body.Reason, retryAfter: resp.Header.Get("Retry-After"),
					policy: resp.Header.Get("RateLimit-Policy"), rateLimit: resp.Header.Get("RateLimit")}
				mu.Lock()
				out = append(out, a)
				mu.Unlock()
			}
		})
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.Now().Add(d)
	for now := range tick.C {
		if now.After(end) {
			break
		}
		select {
		case ticks <- struct{}{}:
		default:
		}
	}
	tick.Stop()
	close(ticks)
	wg.Wait()
	return out
}

// tally counts the answers by status.
func tally(as []limitedAnswer) map[int]int {
	n := map[int]int{}
	for _, a := range as {
		n[a.code]++
	}
	return n
}

var rateLimitHeader = regexp.MustCompile(`^"rate";r=\d+;t=\d+$`)

// shareKnown waits until a check of token sent to one replica's url is
// allowed under policy and shows that the replica knows the key's burst
// and that there are peers replicas: each runs a bucket of burst/peers,
// and RateLimit's r is what is left of its bucket times peers (the key's
// figure). Right after one check, a replica that counts itself alone says
// burst-1, one that counts all peers (burst/peers-1)*peers, at most
// burst-peers.
func shareKnown(t *testing.T, url, token, policy string, burst, peers int) {
	t.Helper()
	remaining := regexp.MustCompile(`^"rate";r=(\d+);t=\d+$`)
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Api-Key", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		got, rl := resp.Header.Get("RateLimit-Policy"), resp.Header.Get("RateLimit")
		last = fmt.Sprintf("%d, RateLimit-Policy %q, RateLimit %q", resp.StatusCode, got, rl)
		if m := remaining.FindStringSubmatch(rl); resp.StatusCode == 200 && got == policy && m != nil {
			if r, _ := strconv.Atoi(m[1]); r <= burst-peers {
				return
			}
		}
	}
	t.Fatalf("%s never answered as one of %d replicas sharing a burst of %d under %s; last: %s", url, peers, burst, policy, last)
}

// TestLimitsAcrossReplicasBehindNginx runs three endpoint replicas behind
// nginx with the documented configuration (docs/gateways.md), sharing
// limits by a Service's EndpointSlices: a key limited to 30/s gets 30/s in
// all ± 20 % under 300/s offered, with 429 rate_limited, Retry-After and
// the RateLimit headers reaching the client; raised to 90/s and then
// removed live, it follows within a second; a daily quota of 1,000 under
// 200/s offered allows no more than 1,000 calls (docs/limits.md: the
// bound is 0 while the replicas agree on their number, plus checks in
// flight when a status arrives), and kubectl get -o wide shows it.
func TestLimitsAcrossReplicasBehindNginx(t *testing.T) {
	bin := buildKeyward(t)
	const peers = "--peers-service=keyward-system/keyward-authn-peers"
	b := &replica{bin: bin, base: 8210, args: []string{peers}}
	c := &replica{bin: bin, base: 8220, args: []string{peers}}
	s := startDev(t, bin, "--usage-endpoints", b.metricsURL()+","+c.metricsURL(), peers)
	// The replicas' Service, as the cluster's EndpointSlice controller
	// would list them: three ready endpoints.
	slices := `apiVersion: v1
kind: Service
metadata: {name: keyward-authn-peers, namespace: keyward-system}
spec:
  ports: [{name: metrics, port: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: keyward-authn-peers-1
  namespace: keyward-system
  labels: {kubernetes.io/service-name: keyward-authn-peers}
addressType: IPv4
ports: [{name: metrics, port: 8443}]
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true}}
- {addresses: [10.0.0.2], conditions: {ready: true}}
- {addresses: [10.0.0.3], conditions: {ready: true}}
- {addresses: [10.0.0.4], conditions: {ready: false}}
`
	if out, err := s.kubectl(t, strings.NewReader(slices), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	startReplicas(t, s, b, c)
	gw := startNginx(t, startUpstream(t), "127.0.0.1:8180", "127.0.0.1:8210", "127.0.0.1:8220")
	waitStates(t, s, "keyward-demo", 30*time.Second)
	apply := func(manifest string) {
		t.Helper()
		if out, err := s.kubectl(t, strings.NewReader(manifest), "apply", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply: %v\n%s", err, out)
		}
	}
	apply(`apiVersion: keyward.dev/v1alpha1
kind: ApiKey
metadata: {name: capped, namespace: keyward-demo}
spec:
  scopes: [occupancy:read]
  limits: {requestsPerSecond: 30}
`)
	waitStates(t, s, "keyward-demo", 30*time.Second)
	token := s.secretValue(t, "keyward-demo", "capped-apikey", "token")
	url := gw + "/occupancy/floors"
	// Each replica has read the key's limit and that there are three of
	// them: a check sent to it directly says so in its RateLimit header
	// (each check takes a token of its bucket of 10; it refills 10 a
	// second).
	for _, addr := range []string{"127.0.0.1:8180", b.httpAddr(), c.httpAddr()} {
		shareKnown(t, "http://"+addr+"/authn", token, `"rate";q=30;w=1`, 30, 3)
	}
	time.Sleep(200 * time.Millisecond) // the probes' tokens are back

	rate := func(as []limitedAnswer, d time.Duration, burst int) float64 {
		return float64(tally(as)[200]-burst) / d.Seconds()
	}
	// 30/s: each of the 3 replicas 10/s, with a burst of 10 each at first.
	as := load(t, url, token, 300, 6*time.Second)
	n := tally(as)
	got := rate(as, 6*time.Second, 30)
	t.Logf("30/s limit, 300/s offered for 6 s through 3 replicas: %v, %.1f/s allowed", n, got)
	if got < 24 || got > 36 {
		t.Errorf("allowed %.1f/s; want 30/s ± 20 %%", got)
	}
	if n[429] < len(as)/2 || n[200]+n[429] != len(as) {
		t.Errorf("answers %v: want most refused with 429 and nothing else", n)
	}
	for _, a := range as {
		if a.policy != `"rate";q=30;w=1` || !rateLimitHeader.MatchString(a.rateLimit) {
			t.Fatalf("answer %d without the rate-limit headers: %+v", a.code, a)
		}
		if a.code == 429 {
			if a.reason != "rate_limited" || a.retryAfter != "1" {
				t.Fatalf("429 %+v: want rate_limited, Retry-After 1", a)
			}
		} else if a.retryAfter != "" {
			t.Fatalf("Retry-After on an allowed call: %+v", a)
		}
	}

	// Raised live to 90/s (30 each): in force within a second.
	s.mustKubectl(t, "-n", "keyward-demo", "patch", "apikey", "capped", "--type", "merge", "-p", `{"spec":{"limits":{"requestsPerSecond":90}}}`)
	time.Sleep(time.Second)
	as = load(t, url, token, 300, 4*time.Second)
	got = rate(as, 4*time.Second, 90) // the new burst (90, 30 a replica) refills within the second
	t.Logf("raised to 90/s: %v, %.1f/s allowed", tally(as), got)
	if got < 72 || got > 108 {
		t.Errorf("allowed %.1f/s after the raise; want 90/s ± 20 %%", got)
	}
	// Removed live: nothing refused, no rate-limit headers.
	s.mustKubectl(t, "-n", "keyward-demo", "patch", "apikey", "capped", "--type", "json", "-p", `[{"op":"remove","path":"/spec/limits"}]`)
	time.Sleep(time.Second)
	as = load(t, url, token, 200, 2*time.Second)
	for _, a := range as {
		if a.code != 200 || a.policy != "" || a.rateLimit != "" {
			t.Fatalf("limits removed, yet %+v", a)
		}
	}

	// A daily quota of 1,000 under 200/s offered for 12 s.
	apply(`apiVersion: keyward.dev/v1alpha1
kind: ApiKey
metadata: {name: daily, namespace: keyward-demo}
spec:
  scopes: [occupancy:read]
  limits: {requestsPerDay: 1000}
`)
	waitStates(t, s, "keyward-demo", 30*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.kubectl(t, nil, "-n", "keyward-demo", "get", "apikey", "daily", "-o", "jsonpath={.status}")
			t.Logf("status of the daily key: %s", out)
		}
	})
	daily := s.secretValue(t, "keyward-demo", "daily-apikey", "token")
	time.Sleep(2 * time.Second)
	as = load(t, url, daily, 200, 12*time.Second)
	n = tally(as)
	t.Logf("daily quota of 1000, 200/s offered for 12 s through 3 replicas: %v", n)
	if n[200] > 1000 {
		t.Errorf("%d calls allowed over a quota of 1000", n[200])
	}
	if n[200] < 1000-2 { // up to replicas-1 calls go unused (docs/limits.md)
		t.Errorf("only %d of the quota of 1000 allowed in 12 s", n[200])
	}
	last := as[len(as)-1]
	if last.code != 429 || last.reason != "quota_exceeded" || last.policy != `"day";q=1000;w=86400` {
		t.Errorf("the last answer: %+v", last)
	}
	// Once the controller has marked the key, every replica says when the
	// quota recovers: when the hour of the first calls leaves the window.
	var ra int
	eventually(t, 20*time.Second, "a quota_exceeded answer with the recovery time", func() bool {
		a := load(t, url, daily, 20, 500*time.Millisecond)
		ra, _ = strconv.Atoi(a[len(a)-1].retryAfter)
		return ra > 82_800
	})
	t.Logf("Retry-After once marked exhausted: %d s", ra)

	var wide string
	eventually(t, 20*time.Second, "kubectl get -o wide to show limits and the quota used", func() bool {
		wide = s.mustKubectl(t, "-n", "keyward-demo", "get", "apikeys", "-o", "wide")
		for _, line := range strings.Split(wide, "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && f[0] == "daily" && strings.Contains(line, "1000/day") {
				limited, _ := strconv.Atoi(f[len(f)-1])
				used, _ := strconv.Atoi(f[len(f)-2])
				return used == n[200] && limited > 0
			}
		}
		return false
	})
	t.Logf("kubectl get apikeys -o wide:\n%s", wide)
	for _, col := range []string{"LIMITS", "QUOTA-USED", "LIMITED-24H"} {
		if !strings.Contains(wide, col) {
			t.Errorf("kubectl get -o wide lacks %s", col)
		}
	}
}
