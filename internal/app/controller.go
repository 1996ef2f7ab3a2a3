// Package app wires keyward's modes: the controller, the auth endpoint and
// dev (everything on a local control plane).
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"keyward.dev/keyward/controllers"
)

// ControllerOptions configure the controller mode.
type ControllerOptions struct {
	// EndpointURL is the gateway URL written into Secrets and status.
	EndpointURL string
	// MetricsAddr and HealthAddr are where /metrics and /healthz, /readyz
	// listen ("0" turns one off).
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
	// MetricsHandlers are served beside /metrics (dev mode: /usage of the
	// in-process auth endpoint).
	MetricsHandlers map[string]http.Handler
	// UsageEndpoints (base URLs) or UsageService (namespace/name of the
	// auth endpoint's Service, port "metrics") find the endpoint replicas
	// whose usage counts the controller collects; neither turns it off.
	UsageEndpoints []string
	UsageService   string
	// UsageInterval and UsageMinWrite override the collection defaults.
	UsageInterval, UsageMinWrite time.Duration
}

// RunController runs the ApiKey controller until ctx is done.
func RunController(ctx context.Context, cfg *rest.Config, o ControllerOptions) error {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  controllers.NewScheme(),
		Cache:                   controllers.CacheOptions(),
		Metrics:                 metricsserver.Options{BindAddress: o.MetricsAddr, ExtraHandlers: o.MetricsHandlers},
		HealthProbeBindAddress:  o.HealthAddr,
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
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("keyward-controller"),
		Endpoint:  o.EndpointURL,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up ApiKey controller: %w", err)
	}
	if endpoints, err := usageEndpoints(mgr, o); err != nil {
		return err
	} else if endpoints != nil {
		if err := mgr.Add(&controllers.UsageCollector{Client: mgr.GetClient(), Endpoints: endpoints,
			Interval: o.UsageInterval, MinWrite: o.UsageMinWrite, Log: o.Logger.WithName("usage")}); err != nil {
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

func usageEndpoints(mgr ctrl.Manager, o ControllerOptions) (func(context.Context) ([]string, error), error) {
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
