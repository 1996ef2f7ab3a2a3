// Command keyward issues, checks and revokes API keys on Kubernetes.
//
//	keyward controller   reconcile ApiKeys (issue, record, deliver, revoke)
//	keyward dev          everything on a local control plane, for trying it out
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"keyward.dev/keyward/controllers"
	stdlog "log"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/serve"
	"keyward.dev/keyward/internal/version"
)

const usage = `keyward issues, checks and revokes API keys on Kubernetes.

Usage:
  keyward controller [flags]   reconcile ApiKeys: issue, record, deliver, revoke
  keyward authn [flags]        the auth endpoint gateways ask (forward auth, ext_authz, review)
  keyward dev [flags]          run everything on a local control plane
  keyward version              the version, commit and Go that built this binary

Run 'keyward <mode> -h' for the flags of a mode.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch mode, args := os.Args[1], os.Args[2:]; mode {
	case "controller":
		err = controller(ctx, args)
	case "authn":
		err = authnMode(ctx, args)
	case "dev":
		err = dev(ctx, args)
	case "version", "--version":
		fmt.Println(version.String())
		return
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "keyward: unknown mode %q\n\n%s", mode, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyward:", err)
		os.Exit(1)
	}
}

func verbosityFlag(fs *flag.FlagSet) *int {
	return fs.Int("v", 0, fmt.Sprintf("log verbosity, 0 to %d (higher would log request bodies, so it is capped)", logging.MaxVerbosity))
}

func controller(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyward controller", flag.ExitOnError)
	var o app.ControllerOptions
	fs.StringVar(&o.EndpointURL, "endpoint-url", "", "gateway URL that keys are used against; written into each key's Secret and status (required)")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8443", "address of /metrics (HTTPS; callers need a token allowed to get /metrics, e.g. bound to keyward-metrics-reader); 0 turns it off")
	fs.StringVar(&o.MetricsCertDir, "metrics-cert-dir", "", "folder with tls.crt and tls.key for the metrics server, reloaded on change (default: a self-signed certificate)")
	fs.StringVar(&o.UsageCAFile, "usage-ca-file", "", "CA bundle that verifies the endpoint replicas' metrics certificates when collecting usage (default: not verified)")
	fs.StringVar(&o.HealthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&o.LeaderElect, "leader-elect", true, "elect one active controller among replicas")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader lease (default: the pod's)")
	fs.StringVar(&o.UsageService, "usage-service", "", "namespace/name of the auth endpoint's Service; its replicas' usage (port \"metrics\") goes into each ApiKey's status")
	usageURLs := fs.String("usage-endpoints", "", "comma-separated metrics base URLs of auth endpoint replicas (instead of --usage-service)")
	fs.DurationVar(&o.UsageInterval, "usage-interval", controllers.DefaultUsageInterval, "how often usage is collected from the auth endpoint replicas")
	fs.DurationVar(&o.UsageMinWrite, "usage-min-write-interval", controllers.DefaultUsageMinWrite, "least time between two usage writes of one ApiKey")
	connect := clusterFlags(fs)
	_ = fs.Parse(args)
	if o.EndpointURL == "" {
		return fmt.Errorf("--endpoint-url is required: the gateway URL clients send their keys to")
	}
	o.UsageEndpoints = splitList(*usageURLs)
	log, cfg, err := connect()
	if err != nil {
		return err
	}
	o.Logger = log
	return app.RunController(ctx, cfg, o)
}

// clusterFlags adds --kubeconfig and -v to a mode that talks to a cluster;
// after parsing, the returned function sets up logging and finds the cluster.
func clusterFlags(fs *flag.FlagSet) func() (logr.Logger, *rest.Config, error) {
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster, or $KUBECONFIG)")
	v := verbosityFlag(fs)
	return func() (logr.Logger, *rest.Config, error) {
		log := logging.New(os.Stderr, *v)
		ctrl.SetLogger(log)
		// client-go logs through klog, the standard library through log:
		// both go through the same redacting, verbosity-capped logger.
		klog.SetLogger(log)
		stdlog.SetOutput(logging.RedactingWriter(os.Stderr))
		// The garbage collector works against the container's memory limit
		// (90 % of the cgroup's), not only against twice the live heap: a
		// burst near the limit is collected rather than killed. GOMEMLIMIT,
		// when set, wins.
		if limit, err := memlimit.Set(memlimit.WithRatio(0.9), memlimit.WithProvider(memlimit.FromCgroup)); err == nil &&
			limit < math.MaxInt64 {
			log.Info("memory limit from the container", "GOMEMLIMIT", limit)
		}
		if *kubeconfig != "" {
			os.Setenv("KUBECONFIG", *kubeconfig)
		}
		cfg, err := config.GetConfig()
		if err != nil {
			return log, nil, fmt.Errorf("find the cluster: %w", err)
		}
		return log, cfg, nil
	}
}

func dev(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyward dev", flag.ExitOnError)
	o := app.DevOptions{Out: os.Stdout}
	fs.StringVar(&o.Assets, "assets", "bin/controlplane", "folder with etcd, kube-apiserver and kube-controller-manager (make controlplane)")
	fs.StringVar(&o.Dir, "dir", "bin/dev", "folder for the kubeconfig, the logs and the lock")
	fs.StringVar(&o.Config, "config", "config", "keyward's config/ tree (CRDs, samples)")
	usageURLs := fs.String("usage-endpoints", "", "comma-separated metrics base URLs of more auth endpoint replicas to collect usage from")
	v := verbosityFlag(fs)
	_ = fs.Parse(args)
	o.Verbosity = *v
	o.UsageEndpoints = splitList(*usageURLs)
	ctrl.SetLogger(logging.New(io.Discard, 0))
	return app.RunDev(ctx, o)
}

func authnMode(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyward authn", flag.ExitOnError)
	var o app.AuthnOptions
	fs.StringVar(&o.HTTPAddr, "http-address", ":8180", "address of forward auth (/authn) and /review")
	fs.StringVar(&o.GRPCAddr, "grpc-address", ":8181", "address of Envoy ext_authz gRPC")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8443", "address of /metrics and /usage (HTTPS; callers need a token allowed to get the path); 0 turns it off")
	fs.StringVar(&o.MetricsCertDir, "metrics-cert-dir", "", "folder with tls.crt and tls.key for the metrics server, reloaded on change (default: a self-signed certificate)")
	fs.StringVar(&o.HealthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&o.AllowQueryKeys, "allow-query-keys", true, "accept keys in the query string (_auth_key, _api_auth); answers carry a Warning")
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", "", "address of /debug/pprof/ (no authentication: localhost only); empty turns it off")
	fs.StringVar(&o.TLS.CertFile, "tls-cert-file", "", "serve the check ports (HTTP and gRPC) over TLS with this certificate (PEM), reloaded when it changes")
	fs.StringVar(&o.TLS.KeyFile, "tls-key-file", "", "key of --tls-cert-file (PEM)")
	fs.StringVar(&o.TLS.ClientCAFile, "tls-client-ca-file", "", "require callers (gateways) to present a certificate of these CAs: mutual TLS")
	fs.DurationVar(&o.MaxStaleness, "max-staleness", 0, "fail checks closed (503 stale) and readiness after the index has not heard from the API server for this long; 0 (default) keeps serving the last known keys through an outage, at the cost of late revocations")
	fs.IntVar(&o.Limits.MaxConns, "max-connections", serve.DefaultMaxConns, "open connections per check port; more are refused")
	fs.IntVar(&o.Limits.MaxInFlight, "max-grpc-in-flight", serve.DefaultMaxInFlight, "gRPC checks answered at once; more get RESOURCE_EXHAUSTED")
	fs.IntVar(&o.Limits.MaxHeaderBytes, "max-header-bytes", serve.DefaultMaxHeaderBytes, "largest request line and headers read (431 beyond); also the buffer a connection holds while its headers arrive")
	fs.DurationVar(&o.Limits.IdleTimeout, "idle-timeout", serve.DefaultIdleTimeout, "close an idle keep-alive HTTP connection after this (set the gateway's upstream keep-alive lower)")
	fs.BoolVar(&o.StripCredentials, "strip-credentials", true, "ask Envoy (gRPC ext_authz) to remove the key before the request goes upstream")
	fs.BoolVar(&o.PerKeyMetrics, "per-key-metrics", true, "export keyward_apikey_checks_total with namespace, name and key_id labels (one series per key and decision); turn off for very many keys")
	fs.StringVar(&o.Replica, "replica-name", "", "name of this run in usage reports (default: host name and a random suffix)")
	connect := clusterFlags(fs)
	_ = fs.Parse(args)
	log, cfg, err := connect()
	if err != nil {
		return err
	}
	o.Logger = log
	return app.RunAuthn(ctx, cfg, o)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
