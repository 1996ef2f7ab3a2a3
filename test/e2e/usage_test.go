package e2e

import (
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"keyward.dev/keyward/internal/testenv"
)

// replica is one more `keyward authn` process beside keyward dev's. Its
// ports: base (forward auth), base+1 (gRPC), base+2 (metrics, /usage),
// base+3 (health).
type replica struct {
	bin, kubeconfig string
	base            int
	args            []string
	cmd             *exec.Cmd
	out             *testenv.Buffer
}

func (r *replica) metricsURL() string { return fmt.Sprintf("https://127.0.0.1:%d", r.base+2) }

func (r *replica) httpAddr() string { return fmt.Sprintf("127.0.0.1:%d", r.base) }

func (r *replica) start(t *testing.T) {
	t.Helper()
	addr := func(off int) string { return fmt.Sprintf("127.0.0.1:%d", r.base+off) }
	r.out = &testenv.Buffer{}
	r.cmd = exec.Command(r.bin, append([]string{"authn", "--kubeconfig", r.kubeconfig, "--http-address", addr(0), "--grpc-address", addr(1),
		"--metrics-bind-address", addr(2), "--health-probe-bind-address", addr(3)}, r.args...)...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "replica "+addr(0)+" to be ready", func() bool {
		resp, err := http.Get("http://" + addr(3) + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// startReplicas starts more endpoint replicas against keyward dev's API
// server, stopped (and their output shown on failure) when the test ends.
func startReplicas(t *testing.T, s *system, rs ...*replica) {
	t.Helper()
	for _, r := range rs {
		r.kubeconfig = s.kubeconfig
		r.start(t)
		t.Cleanup(func() {
			r.kill()
			if t.Failed() {
				t.Logf("replica %d said:\n%s", r.base, tail(r.out.String(), 3000))
			}
		})
	}
}

// kill ends the replica as a crash would: no shutdown, no last report.
func (r *replica) kill() {
	if r.cmd != nil && r.cmd.ProcessState == nil {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		_ = r.cmd.Wait()
	}
}

// sent is one call the test made through nginx.
type sent struct {
	at      time.Time
	key     string
	allowed bool
}

// TestUsageAcrossReplicas sends a known number of calls for two keys
// through nginx to three endpoint replicas, kills one mid-way and starts it
// again, and checks that `kubectl get apikeys` shows the totals within 60
// seconds, at default settings: never more calls than were made, and fewer
// by at most the calls of the last collection interval before the kill.
func TestUsageAcrossReplicas(t *testing.T) {
	bin := buildKeyward(t)
	b := &replica{bin: bin, base: 8190}
	c := &replica{bin: bin, base: 8200}
	s := startDev(t, bin, "--usage-endpoints", b.metricsURL()+","+c.metricsURL())
	startReplicas(t, s, b, c)
	gw := startNginx(t, startUpstream(t), "127.0.0.1:8180", "127.0.0.1:8190", "127.0.0.1:8200")
	waitStates(t, s, "keyward-demo", 30*time.Second)
	token := func(key string) string {
		return s.secretValue(t, "keyward-demo", key+"-apikey", "token")
	}
	reader, activator := token("occupancy-reader"), token("agent-activator")

	// Each replica must know the keys before the calls (their watches lag
	// the Active status a moment); each probe is a denial of its key.
	var calls []sent
	for _, addr := range []string{"127.0.0.1:8180", "127.0.0.1:8190", "127.0.0.1:8200"} {
		s.replicaKnows(t, addr, reader, activator)
		calls = append(calls, sent{at: time.Now(), key: "occupancy-reader"}, sent{at: time.Now(), key: "agent-activator"})
	}

	send := func(n int) {
		for i := range n {
			key, tok, path := "occupancy-reader", reader, "/occupancy/floors"
			switch {
			case i%2 == 1:
				key, tok, path = "agent-activator", activator, "/api/agents"
			case i%10 == 4:
				path = "/devices/reboot" // the reader lacks devices:write: a denied call
			}
			a := call(t, gw+path, "x-api-key", tok)
			if a.code != 200 && a.code != 403 {
				t.Fatalf("call %d (%s %s): %d %v", len(calls), key, path, a.code, a.body)
			}
			calls = append(calls, sent{at: time.Now(), key: key, allowed: a.code == 200})
			time.Sleep(25 * time.Millisecond)
		}
	}
	send(300)
	killedAt := time.Now()
	b.kill()
	send(150)
	b.start(t) // a new run of the replica, counting from zero
	send(150)
	last := time.Now()

	// The calls the killed replica may have taken with it: those of the
	// collection interval (5 s by default) before the kill, plus a second
	// for a collection in flight.
	type figures struct{ allowed, denied, lostAllowed, lostDenied int }
	want := map[string]*figures{"occupancy-reader": {}, "agent-activator": {}}
	for _, x := range calls {
		f := want[x.key]
		lost := !x.at.Before(killedAt.Add(-6*time.Second)) && !x.at.After(killedAt)
		if x.allowed {
			f.allowed++
			if lost {
				f.lostAllowed++
			}
		} else {
			f.denied++
			if lost {
				f.lostDenied++
			}
		}
	}
	if want["occupancy-reader"].denied == 0 {
		t.Fatal("the test made no denied calls")
	}

	shown := func() map[string][2]int {
		out := s.mustKubectl(t, "-n", "keyward-demo", "get", "apikeys", "--no-headers",
			"-o", "custom-columns=NAME:.metadata.name,CALLS:.status.usage.last24h,DENIED:.status.usage.denied24h")
		got := map[string][2]int{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 {
				a, _ := strconv.Atoi(f[1])
				d, _ := strconv.Atoi(f[2])
				got[f[0]] = [2]int{a, d}
			}
		}
		return got
	}
	var got map[string][2]int
	eventually(t, 60*time.Second, "kubectl get apikeys to show the calls", func() bool {
		got = shown()
		for key, f := range want {
			if got[key][0] < f.allowed-f.lostAllowed || got[key][1] < f.denied-f.lostDenied {
				time.Sleep(time.Second)
				return false
			}
		}
		return true
	})
	t.Logf("figures shown %s after the last call: %v; made %+v %+v", time.Since(last).Round(time.Second), got,
		*want["occupancy-reader"], *want["agent-activator"])
	// Another collection and write later, nothing is counted twice.
	time.Sleep(8 * time.Second)
	got = shown()
	for key, f := range want {
		if got[key][0] > f.allowed || got[key][1] > f.denied {
			t.Errorf("%s: shows %d allowed / %d denied, but only %d / %d calls were made", key, got[key][0], got[key][1], f.allowed, f.denied)
		}
	}
	table := s.mustKubectl(t, "-n", "keyward-demo", "get", "apikeys")
	if !strings.Contains(table, "CALLS-24H") || !strings.Contains(table, "LAST USED") {
		t.Errorf("kubectl get apikeys lacks the usage columns:\n%s", table)
	}
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "occupancy-reader ") && !strings.Contains(line, " "+strconv.Itoa(got["occupancy-reader"][0])+" ") {
			t.Errorf("the CALLS-24H column does not show %d:\n%s", got["occupancy-reader"][0], table)
		}
	}
}
