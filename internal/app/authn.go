package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
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
	// MetricsAddr serves /metrics and /usage over TLS to authenticated,
	// authorized callers only; "" or "0" turns it off. HealthAddr serves
	// /healthz and /readyz; "" or "0" turns it off.
	MetricsAddr, HealthAddr string
	// MetricsCertDir holds tls.crt and tls.key for the metrics server
	// (reloaded on change); empty: a self-signed certificate.
	MetricsCertDir string
	AllowQueryKeys bool
	// PprofAddr serves /debug/pprof/ (for profiling under load), without
	// authentication: keep it on localhost or off ("").
	PprofAddr        string
	StripCredentials bool
	// Namespaces limits the watch (tests); empty watches all.
	Namespaces []string
	Logger     logr.Logger
	// Index, when set, is used instead of a new one (tests, dev).
	Index *index.Index
	// Replica names this run in usage reports (default: host name and a
	// random suffix, so a restarted replica is a new one).
	Replica string
	// PerKeyMetrics exports keyward_apikey_checks_total with one series per
	// key and decision; large installations may turn it off.
	PerKeyMetrics bool
	// PeersService is namespace/name of the endpoint's own Service: its
	// ready endpoints share each key's limits. Empty: this replica alone.
	PeersService string
	// MaxStaleness, when set, fails checks closed (503 stale) and
	// readiness once the index has not heard from the API server for this
	// long; 0 serves from the last known state through an outage.
	MaxStaleness time.Duration
	// TLS, when set, serves both check ports over TLS (mutual with a
	// client CA).
	TLS TLSOptions
	// Limits bound what clients can hold (connections, checks in flight,
	// idle time, message sizes); zero fields take serve's defaults.
	Limits serve.Limits
}

// ReplicaName is a name for one run of an endpoint replica: the host (the
// pod) and a random suffix. The collector reads the host back
// (usage.HostOf) to tell when a run is gone for good.
func ReplicaName() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%x", usage.HostName(host), b)
}

// The decision metrics are registered once with the process-wide registry
// (dev mode and tests run several endpoints in one process).
var (
	metricsOnce     sync.Once
	decisionMetrics *serve.Metrics
)

// RunAuthn runs the auth endpoint until ctx is done: a controller-runtime
// Manager whose runnables (the index's watch, the HTTP and the gRPC check
// servers) need no leader, since every replica builds its own index. The
// Manager serves /metrics and /usage behind TokenReview and
// SubjectAccessReview over TLS, the probes (ready once the keys are
// loaded) and pprof.
func RunAuthn(ctx context.Context, cfg *rest.Config, o AuthnOptions) error {
	ix := o.Index
	if ix == nil {
		ix = index.New()
	}
	metricsOnce.Do(func() { decisionMetrics = serve.NewMetrics(ctrlmetrics.Registry) })
	if o.Replica == "" {
		o.Replica = ReplicaName()
	}
	ix.SetReplica(o.Replica)
	var peersNS, peersName string
	if o.PeersService != "" {
		var err error
		if peersNS, peersName, err = splitService("--peers-service", o.PeersService); err != nil {
			return err
		}
	}
	peers := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_authn_peers",
		Help: "Replicas that share each key's limits (ready endpoints of --peers-service; 1 without it): this replica enforces 1/N of each rate and of what is left of each quota.",
	}, func() float64 { return float64(ix.Peers()) })
	if err := registerOnce(peers); err != nil {
		return err
	}
	// Key IDs that more than one ApiKey's record claims: each is served
	// to its first claimant only (internal/index, ownership.go); anything
	// but 0 is a restore under another name or a takeover attempt, and the
	// controller reports KeyIdConflict on the other ApiKey.
	contested := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_authn_contested_key_ids",
		Help: "Key IDs claimed by more than one ApiKey's record; each is served to its first claimant only.",
	}, func() float64 { return float64(ix.Contested()) })
	if err := registerOnce(contested); err != nil {
		return err
	}
	staleness := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyward_authn_index_staleness_seconds",
		Help: "How long the index may have missed changes: 0 while every watch is open, else the time since the least current watch last heard from the API server.",
	}, func() float64 { return ix.Staleness(time.Now()).Seconds() })
	if err := registerOnce(staleness); err != nil {
		return err
	}
	if o.PerKeyMetrics {
		if err := registerOnce(usage.NewMetrics(ix)); err != nil {
			return err
		}
	}
	s := &serve.Server{
		Decider:          &authn.Decider{Index: ix},
		AllowQueryKeys:   o.AllowQueryKeys,
		StripCredentials: o.StripCredentials,
		Metrics:          decisionMetrics,
		Log:              o.Logger,
		Limits:           o.Limits,
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics: secureMetrics(o.MetricsAddr, o.MetricsCertDir,
			map[string]http.Handler{usage.Path: (&usage.Reporter{Index: ix, Replica: o.Replica}).Handler()}),
		HealthProbeBindAddress: o.HealthAddr,
		PprofBindAddress:       o.PprofAddr,
		Logger:                 o.Logger,
		// Every replica serves; none is elected.
		LeaderElection: false,
		// The endpoint reads the API server only through its own watch.
		Cache: cache.Options{ReaderFailOnMissingInformer: true},
	})
	if err != nil {
		return fmt.Errorf("set up the auth endpoint: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("keys-loaded", func(*http.Request) error {
		switch {
		case !ix.Synced():
			return errors.New("keys not loaded yet")
		case ix.Stale():
			return fmt.Errorf("no word from the API server for %s (--max-staleness %s)",
				ix.Staleness(time.Now()).Round(time.Second), o.MaxStaleness)
		}
		return nil
	}); err != nil {
		return err
	}
	var tc *tls.Config
	if o.TLS.enabled() {
		c, w, err := o.TLS.config()
		if err != nil {
			return err
		}
		tc = c
		if err := mgr.Add(w); err != nil {
			return err
		}
	}
	for _, r := range []manager.Runnable{
		leaderless(func(ctx context.Context) error {
			// Until the first list completes, checks get 503 not_ready;
			// the watches go on in the background until ctx is done.
			if err := index.Watch(ctx, cfg, ix, o.Namespaces...); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("watch keys: %w", err)
			}
			o.Logger.Info("keys loaded", "keys", ix.Len())
			// The initial lists decoded every ApiKey and record once; hand
			// that garbage back to the OS now rather than when the
			// scavenger gets to it, so a replica's memory is its index.
			debug.FreeOSMemory()
			<-ctx.Done()
			return nil
		}),
		leaderless(func(ctx context.Context) error {
			if o.MaxStaleness <= 0 {
				return nil
			}
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case now := <-t.C:
					ix.CheckStaleness(now, o.MaxStaleness)
				}
			}
		}),
		leaderless(func(ctx context.Context) error {
			if peersName == "" {
				return nil
			}
			return watchPeers(ctx, cfg, ix, peersNS, peersName)
		}),
		leaderless(func(ctx context.Context) error { return serveHTTP(ctx, o.HTTPAddr, s, tc) }),
		leaderless(func(ctx context.Context) error { return serveGRPC(ctx, o.GRPCAddr, s, tc) }),
	} {
		if err := mgr.Add(r); err != nil {
			return err
		}
	}
	o.Logger.Info("auth endpoint starting", "http", o.HTTPAddr, "grpc", o.GRPCAddr, "metrics", o.MetricsAddr)
	return mgr.Start(ctx)
}

// registerOnce registers a collector with the process-wide registry, which
// dev mode and tests share between several endpoints.
func registerOnce(c prometheus.Collector) error {
	err := ctrlmetrics.Registry.Register(c)
	if are := (prometheus.AlreadyRegisteredError{}); err != nil && !errors.As(err, &are) {
		return err
	}
	return nil
}

// leaderless is a runnable every replica runs.
type leaderless func(context.Context) error

func (f leaderless) Start(ctx context.Context) error { return f(ctx) }
func (leaderless) NeedLeaderElection() bool          { return false }

// shutdownGrace bounds a server's graceful stop.
const shutdownGrace = 5 * time.Second

// serveHTTP serves forward auth and /review until ctx is done, over TLS
// when tc is set.
func serveHTTP(ctx context.Context, addr string, s *serve.Server, tc *tls.Config) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	if tc != nil {
		l = tls.NewListener(l, tc)
	}
	srv := s.HTTPServer()
	errs := make(chan error, 1)
	go func() { errs <- srv.Serve(l) }()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	shutdown, done := context.WithTimeout(context.Background(), shutdownGrace)
	defer done()
	return srv.ShutdownWithContext(shutdown)
}

// serveGRPC serves Envoy's ext_authz until ctx is done; the listener caps
// connections (gRPC has no such option of its own).
func serveGRPC(ctx context.Context, addr string, s *serve.Server, tc *tls.Config) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	var opts []grpc.ServerOption
	if tc != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	gs := s.GRPCServer(opts...)
	errs := make(chan error, 1)
	go func() { errs <- gs.Serve(netutil.LimitListener(l, s.Limits.Conns())) }()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		gs.Stop()
	}
	return nil
}
