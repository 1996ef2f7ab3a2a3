package app

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/serve"
	"keyward.dev/keyward/internal/usage"
)

// AuthnOptions configure the auth endpoint.
type AuthnOptions struct {
	// HTTPAddr serves /authn and /review; GRPCAddr Envoy's ext_authz.
	HTTPAddr, GRPCAddr string
	// MetricsAddr and HealthAddr: "" leaves them to someone else (dev mode
	// shares the controller's).
	MetricsAddr, HealthAddr string
	AllowQueryKeys          bool
	// Pprof serves /debug/pprof/ beside /metrics (for profiling under load).
	Pprof            bool
	StripCredentials bool
	// Namespaces limits the watch (tests); empty watches all.
	Namespaces []string
	Logger     logr.Logger
	// Ready, when set, is called with the index's readiness check.
	Ready func(check func(*http.Request) error)
	// Index, when set, is used instead of a new one (tests, dev).
	Index *index.Index
	// Replica names this run in usage reports (default: host name and a
	// random suffix, so a restarted replica is a new one).
	Replica string
	// PerKeyMetrics exports keyward_apikey_checks_total with one series per
	// key and decision; large installations may turn it off.
	PerKeyMetrics bool
}

// ReplicaName is a name for one run of an endpoint replica: the host (the
// pod) and a random suffix.
func ReplicaName() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	if len(host) > 48 {
		host = host[:48]
	}
	return fmt.Sprintf("%s-%x", host, b)
}

// The decision metrics are registered once with the process-wide registry
// (dev mode and tests run several endpoints in one process).
var (
	metricsOnce     sync.Once
	decisionMetrics *serve.Metrics
)

// RunAuthn runs the auth endpoint until ctx is done. Every replica builds
// its own index from a watch and needs no leader.
func RunAuthn(ctx context.Context, cfg *rest.Config, o AuthnOptions) error {
	ix := o.Index
	if ix == nil {
		ix = index.New()
	}
	metricsOnce.Do(func() { decisionMetrics = serve.NewMetrics(ctrlmetrics.Registry) })
	if o.Replica == "" {
		o.Replica = ReplicaName()
	}
	// Key IDs that more than one ApiKey's record claims: each is served
	// to its first claimant only (internal/index, ownership.go); anything
	// but 0 is a restore under another name or a takeover attempt, and the
	// controller reports KeyIdConflict on the other ApiKey.
	contested := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_authn_contested_key_ids",
		Help: "Key IDs claimed by more than one ApiKey's record; each is served to its first claimant only.",
	}, func() float64 { return float64(ix.Contested()) })
	if err := ctrlmetrics.Registry.Register(contested); err != nil && !errors.As(err, &prometheus.AlreadyRegisteredError{}) {
		return err
	}
	if o.PerKeyMetrics {
		// One per process: dev mode and tests may run several endpoints.
		err := ctrlmetrics.Registry.Register(usage.NewMetrics(ix))
		if are := (prometheus.AlreadyRegisteredError{}); err != nil && !errors.As(err, &are) {
			return err
		}
	}
	s := &serve.Server{
		Decider:          &authn.Decider{Index: ix},
		AllowQueryKeys:   o.AllowQueryKeys,
		StripCredentials: o.StripCredentials,
		Metrics:          decisionMetrics,
		Log:              o.Logger,
	}
	ready := func(*http.Request) error {
		if !ix.Synced() {
			return errors.New("keys not loaded yet")
		}
		return nil
	}
	if o.Ready != nil {
		o.Ready(ready)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 5)
	var servers []*http.Server
	listen := func(addr string, h http.Handler) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		}()
		return nil
	}
	hl, err := net.Listen("tcp", o.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.HTTPAddr, err)
	}
	defer hl.Close() // also when a listener below fails
	checks := s.HTTPServer()
	go func() {
		if err := checks.Serve(hl); err != nil {
			errs <- err
		}
	}()
	if o.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}))
		mux.Handle(usage.Path, usage.Handler(ix, o.Replica))
		if o.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		}
		if err := listen(o.MetricsAddr, mux); err != nil {
			return err
		}
	}
	if o.HealthAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			if err := ready(r); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok"))
		})
		if err := listen(o.HealthAddr, mux); err != nil {
			return err
		}
	}
	gl, err := net.Listen("tcp", o.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.GRPCAddr, err)
	}
	gs := s.GRPCServer()
	go func() {
		if err := gs.Serve(gl); err != nil {
			errs <- err
		}
	}()
	o.Logger.Info("auth endpoint listening", "http", o.HTTPAddr, "grpc", o.GRPCAddr)

	go func() {
		// Until the first list completes, checks get 503 not_ready.
		if err := index.Watch(ctx, cfg, ix, o.Namespaces...); err != nil && ctx.Err() == nil {
			errs <- err
			return
		}
		o.Logger.Info("keys loaded", "keys", ix.Len())
		// The initial lists decoded every ApiKey and record once; hand that
		// garbage back to the OS now rather than when the scavenger gets to
		// it, so a replica's memory is its index from the start.
		debug.FreeOSMemory()
	}()

	select {
	case <-ctx.Done():
		err = nil
	case err = <-errs:
	}
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = checks.ShutdownWithContext(shutdown)
	for _, srv := range servers {
		_ = srv.Shutdown(shutdown)
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdown.Done():
		gs.Stop()
	}
	return err
}
