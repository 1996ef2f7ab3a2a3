// Package app wires keyward's modes: the controller, the auth endpoint and
// dev (everything on a local control plane).
package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
)

// ControllerOptions configure the controller mode.
type ControllerOptions struct {
	// EndpointURL is the gateway URL written into Secrets and status.
	EndpointURL string
	// MetricsAddr and HealthAddr are where /metrics (TLS, authenticated
	// and authorized callers only) and /healthz, /readyz listen ("0" turns
	// one off).
	MetricsAddr, HealthAddr string
	// LeaderElect makes replicas elect one active controller.
	LeaderElect bool
	// LeaderElectionNamespace holds the lease (default: the pod's namespace).
	LeaderElectionNamespace string
	Logger                  logr.Logger
	// AgainInProcess allows a controller to run again in the same process
	// after an earlier one stopped (tests).
	AgainInProcess bool
	// ExtraReadyz are more readiness checks (dev mode: the auth endpoint's).
	ExtraReadyz map[string]func(*http.Request) error
	// MetricsCertDir holds tls.crt and tls.key for /metrics (reloaded on
	// change); empty: a self-signed certificate.
	MetricsCertDir string
	// UsageCAFile verifies the endpoint replicas' metrics certificates when
	// collecting usage; empty: not verified (self-signed certificates).
	UsageCAFile string
	// UsageEndpoints (base URLs) or UsageService (namespace/name of the
	// auth endpoint's Service, port "metrics") find the endpoint replicas
	// whose usage counts the controller collects; neither turns it off.
	UsageEndpoints []string
	UsageService   string
	// UsageInterval, UsageMinWrite and UsageWritesPerSecond override the
	// collection defaults.
	UsageInterval, UsageMinWrite time.Duration
	UsageWritesPerSecond         float64
	// Concurrency is how many ApiKeys are reconciled at once (0:
	// controllers.DefaultConcurrency).
	Concurrency int
	// QPS and Burst limit the controller's requests to the API server on
	// the client side (0: DefaultQPS, DefaultBurst; negative QPS: no limit,
	// leaving it to the API server's priority and fairness).
	QPS   float32
	Burst int
	// PprofAddr serves /debug/pprof/ (profiling the controller's memory
	// and CPU), without authentication: localhost only; "" turns it off.
	PprofAddr string
	// DefaultPolicy, when set, is created unless an ApiKeyPolicy of its
	// name exists (config/policy/default.yaml from the binary).
	DefaultPolicy *kw.ApiKeyPolicy
}

// The client-side limits of the controller's requests, the same for make
// run (keyward dev) as deployed. Issuing a key takes five writes (the
// finalizer, the Secret, the record, its Event, the status: make bench
// counts them); client-go's default of 5 requests a second held make run to
// under three keys a second.
const (
	DefaultQPS   = 1000
	DefaultBurst = 2000
)

// RunController runs the ApiKey controller until ctx is done.
func RunController(ctx context.Context, cfg *rest.Config, o ControllerOptions) error {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = cmp.Or(o.QPS, DefaultQPS), cmp.Or(o.Burst, DefaultBurst)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  controllers.NewScheme(),
		Cache:                   controllers.CacheOptions(),
		NewClient:               controllers.NewClient,
		Metrics:                 secureMetrics(o.MetricsAddr, o.MetricsCertDir, nil),
		HealthProbeBindAddress:  o.HealthAddr,
		PprofBindAddress:        o.PprofAddr,
		LeaderElection:          o.LeaderElect,
		LeaderElectionID:        "keyward-controller.keyward.dev",
		LeaderElectionNamespace: o.LeaderElectionNamespace,
		// The lease is handed over at once on a clean shutdown.
		LeaderElectionReleaseOnCancel: true,
		Logger:                        o.Logger,
		Controller:                    config.Controller{SkipNameValidation: &o.AgainInProcess},
	})
	if err != nil {
		return fmt.Errorf("set up controller: %w", err)
	}
	r := &controllers.ApiKeyReconciler{
		Client:      mgr.GetClient(),
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("keyward-controller"),
		Endpoint:    o.EndpointURL,
		Concurrency: o.Concurrency,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up ApiKey controller: %w", err)
	}
	controllers.ExportKeyMetrics(mgr.GetCache())
	if o.DefaultPolicy != nil {
		if err := mgr.Add(&controllers.DefaultPolicy{Client: mgr.GetClient(), Policy: o.DefaultPolicy,
			Log: o.Logger.WithName("default-policy")}); err != nil {
			return err
		}
	}
	if endpoints, err := usageEndpoints(mgr, o); err != nil {
		return err
	} else if endpoints != nil {
		rt, err := usageTransport(cfg, o.UsageCAFile)
		if err != nil {
			return err
		}
		if cfg.BearerToken == "" && cfg.BearerTokenFile == "" {
			o.Logger.Info("the controller has no bearer token (not a ServiceAccount?): the endpoint replicas will refuse its usage collection")
		}
		if err := mgr.Add(&controllers.UsageCollector{Client: mgr.GetClient(), Endpoints: endpoints, Transport: rt,
			Interval: o.UsageInterval, MinWrite: o.UsageMinWrite, WritesPerSecond: o.UsageWritesPerSecond, Log: o.Logger.WithName("usage")}); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready once the caches have synced.
	if err := mgr.AddReadyzCheck("cache", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("cache not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	for name, check := range o.ExtraReadyz {
		if err := mgr.AddReadyzCheck(name, check); err != nil {
			return err
		}
	}
	return mgr.Start(ctx)
}

func usageEndpoints(mgr ctrl.Manager, o ControllerOptions) (func(context.Context) (controllers.Replicas, error), error) {
	switch {
	case o.UsageService != "":
		ns, name, ok := strings.Cut(o.UsageService, "/")
		if !ok || ns == "" || name == "" {
			return nil, fmt.Errorf("--usage-service %q: want namespace/name of the auth endpoint's Service", o.UsageService)
		}
		return controllers.ServiceEndpoints(mgr.GetAPIReader(), ns, name, "metrics"), nil
	case len(o.UsageEndpoints) > 0:
		return controllers.StaticEndpoints(o.UsageEndpoints...), nil
	}
	return nil, nil
}

// secureMetrics serves /metrics and extra on addr over TLS, only to callers
// whose bearer token the API server authenticates (TokenReview) and who may
// get the path (SubjectAccessReview, e.g. keyward-metrics-reader): metrics
// and usage name every tenant's keys. "" or "0" turns it off.
func secureMetrics(addr, certDir string, extra map[string]http.Handler) metricsserver.Options {
	if addr == "" {
		addr = "0"
	}
	return metricsserver.Options{
		BindAddress:    addr,
		SecureServing:  true,
		CertDir:        certDir,
		FilterProvider: metricsAuth,
		ExtraHandlers:  extra,
		// HTTP/1.1 only, as kubebuilder scaffolds: HTTP/2's stream reset
		// and continuation floods are not worth it for a scrape.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.NextProtos = []string{"http/1.1"}
			c.MinVersion = tls.VersionTLS12
		}},
	}
}

// usageTransport reaches the endpoint replicas' /usage over TLS with the
// controller's own ServiceAccount token (re-read from its file as the
// kubelet rotates it). The replicas' certificates are verified against
// caFile; without one they are self-signed and not verified.
func usageTransport(cfg *rest.Config, caFile string) (http.RoundTripper, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--usage-ca-file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--usage-ca-file %s holds no PEM certificate", caFile)
		}
	} else {
		tc.InsecureSkipVerify = true //nolint:gosec // self-signed metrics certificates; see docs/hardening.md
	}
	base := &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}
	return transport.NewBearerAuthWithRefreshRoundTripper(cfg.BearerToken, cfg.BearerTokenFile, base)
}
