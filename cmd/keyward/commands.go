package main

import (
	"flag"
	"fmt"
	stdlog "log"
	"math"
	"os"
	"strings"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	clientconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	"keyward.dev/keyward/config"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/serve"
	"keyward.dev/keyward/internal/version"
)

// usageError is a command line keyward cannot run (exit code 2).
type usageError struct{ error }

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "keyward",
		Short: "keyward issues, checks and revokes API keys on Kubernetes",
		Long: `keyward issues, checks and revokes API keys on Kubernetes.

Teams declare ApiKey resources; the controller issues each key, keeps only
its hash in an ApiKeyRecord and writes the token once into a Secret; the auth
endpoint answers the gateways (nginx, Traefik, Caddy, Envoy/Istio) on every
request. Archiving a key revokes it at once.`,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w\nRun '%s --help' for its flags", err, c.CommandPath())}
	})
	root.AddCommand(controllerCommand(), authnCommand(), devCommand(), versionCommand())
	return root
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go that built this binary",
		Args:  noArgs,
		Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), version.String()) },
	}
}

func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", c.CommandPath(), args)}
	}
	return nil
}

func controllerCommand() *cobra.Command {
	var o app.ControllerOptions
	var usageURLs []string
	c := &cobra.Command{
		Use:   "controller",
		Short: "Reconcile ApiKeys: issue, record, deliver, rotate, revoke",
		Long: `Reconcile ApiKeys: issue each key, record its hash in an ApiKeyRecord,
deliver the token into a Secret, rotate it on request or schedule, and revoke
it when the ApiKey is archived, expires or is deleted. Replicas elect one
leader; usage counts from the auth endpoint replicas go into each ApiKey's
status.`,
		Example: `  keyward controller --endpoint-url=https://api.example.com \
    --usage-service=keyward-system/keyward-authn-metrics`,
		Args: noArgs,
	}
	fs := c.Flags()
	fs.StringVar(&o.EndpointURL, "endpoint-url", "", "gateway URL that keys are used against; written into each key's Secret and status (required)")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8443", "address of /metrics (HTTPS; callers need a token allowed to get /metrics, e.g. bound to keyward-metrics-reader); 0 turns it off")
	fs.StringVar(&o.MetricsCertDir, "metrics-cert-dir", "", "folder with tls.crt and tls.key for the metrics server, reloaded on change (default: a self-signed certificate)")
	fs.StringVar(&o.UsageCAFile, "usage-ca-file", "", "CA bundle that verifies the endpoint replicas' metrics certificates when collecting usage (default: not verified)")
	fs.StringVar(&o.HealthAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&o.LeaderElect, "leader-elect", true, "elect one active controller among replicas")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader lease (default: the pod's)")
	fs.StringVar(&o.UsageService, "usage-service", "", "namespace/name of the auth endpoint's metrics Service; its replicas' usage (port \"metrics\") goes into each ApiKey's status")
	fs.StringSliceVar(&usageURLs, "usage-endpoints", nil, "metrics base URLs of auth endpoint replicas, comma-separated (instead of --usage-service)")
	fs.DurationVar(&o.UsageInterval, "usage-interval", controllers.DefaultUsageInterval, "how often usage is collected from the auth endpoint replicas")
	fs.DurationVar(&o.UsageMinWrite, "usage-min-write-interval", controllers.DefaultUsageMinWrite, "least time between two usage writes of one ApiKey")
	fs.Float64Var(&o.UsageWritesPerSecond, "usage-writes-per-second", controllers.DefaultUsageWritesPerSecond, "status writes of usage figures a second, in all; beyond it the stalest figures go first (docs/usage.md)")
	fs.IntVar(&o.Concurrency, "max-concurrent-reconciles", controllers.DefaultConcurrency, "ApiKeys reconciled at once (one ApiKey is never reconciled twice at once)")
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", "", "address of /debug/pprof/ (no authentication: localhost only); empty turns it off")
	fs.Float32Var(&o.QPS, "kube-api-qps", app.DefaultQPS, "requests a second to the API server, on average; negative: no client-side limit (the API server's priority and fairness still apply)")
	fs.IntVar(&o.Burst, "kube-api-burst", app.DefaultBurst, "requests to the API server in a burst above --kube-api-qps")
	defaultPolicy := fs.Bool("default-policy", true, "create ApiKeyPolicy default (write scopes * and *:write only in namespaces labelled keyward.dev/write-access=true) when no ApiKeyPolicy of that name exists; an existing one is never changed")
	connect := clusterFlags(fs)
	c.RunE = func(c *cobra.Command, _ []string) error {
		if *defaultPolicy {
			p, err := controllers.ParsePolicy(config.DefaultPolicy)
			if err != nil {
				return err
			}
			o.DefaultPolicy = p
		}
		if o.EndpointURL == "" {
			return usageError{fmt.Errorf("--endpoint-url is required: the gateway URL clients send their keys to")}
		}
		o.UsageEndpoints = trimList(usageURLs)
		log, cfg, err := connect()
		if err != nil {
			return err
		}
		o.Logger = log
		return app.RunController(c.Context(), cfg, o)
	}
	return c
}

func authnCommand() *cobra.Command {
	var o app.AuthnOptions
	c := &cobra.Command{
		Use:   "authn",
		Short: "Run the auth endpoint the gateways ask (forward auth, Envoy ext_authz, review)",
		Long: `Run the auth endpoint the gateways ask on every request: forward auth
(nginx auth_request, Traefik forwardAuth, Caddy forward_auth) on /authn,
the Kubernetes-style review API on /review, and Envoy ext_authz over gRPC.
Each replica builds its own index of key hashes from a watch; no leader.`,
		Example: `  keyward authn --allow-query-keys=false
  keyward authn --tls-cert-file=/tls/tls.crt --tls-key-file=/tls/tls.key --tls-client-ca-file=/tls/ca.crt`,
		Args: noArgs,
	}
	fs := c.Flags()
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
	fs.DurationVar(&o.MaxStaleness, "max-staleness", 0, "fail checks closed (503 stale) and readiness after the index has not heard from the API server for this long; 0 keeps serving the last known keys through an outage, at the cost of late revocations")
	fs.IntVar(&o.Limits.MaxConns, "max-connections", serve.DefaultMaxConns, "open connections per check port; more are refused")
	fs.IntVar(&o.Limits.MaxInFlight, "max-grpc-in-flight", serve.DefaultMaxInFlight, "gRPC checks answered at once; more get RESOURCE_EXHAUSTED")
	fs.IntVar(&o.Limits.MaxHeaderBytes, "max-header-bytes", serve.DefaultMaxHeaderBytes, "largest request line and headers read (431 beyond); also the buffer a connection holds while its headers arrive")
	fs.DurationVar(&o.Limits.IdleTimeout, "idle-timeout", serve.DefaultIdleTimeout, "close an idle keep-alive HTTP connection after this (set the gateway's upstream keep-alive lower)")
	fs.BoolVar(&o.StripCredentials, "strip-credentials", true, "ask Envoy (gRPC ext_authz) to remove the key before the request goes upstream")
	fs.BoolVar(&o.PerKeyMetrics, "per-key-metrics", true, "export keyward_apikey_checks_total with namespace, name and key_id labels (one series per key and decision); turn off for very many keys")
	fs.StringVar(&o.Replica, "replica-name", "", "name of this run in usage reports (default: host name and a random suffix)")
	fs.StringVar(&o.PeersService, "peers-service", "", "namespace/name of this endpoint's own Service: each replica enforces 1/N of a key's rate and of what is left of its quota, N the Service's ready endpoints (default: none, N = 1, for a single replica)")
	connect := clusterFlags(fs)
	c.RunE = func(c *cobra.Command, _ []string) error {
		log, cfg, err := connect()
		if err != nil {
			return err
		}
		o.Logger = log
		return app.RunAuthn(c.Context(), cfg, o)
	}
	return c
}

func devCommand() *cobra.Command {
	o := app.DevOptions{Out: os.Stdout}
	var usageURLs []string
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run everything on a local control plane, for trying keyward out (make run)",
		Long: `Run etcd, kube-apiserver and kube-controller-manager locally, install
keyward's CRDs, RBAC and admission policies, start the controller and the
auth endpoint as their ServiceAccounts, and apply the samples. Prints the
commands to try it; Ctrl-C stops everything.`,
		Example: `  make run     # builds the control plane and keyward, then runs:
  keyward dev --assets bin/controlplane --dir bin/dev --config config`,
		Args: noArgs,
	}
	fs := c.Flags()
	fs.StringVar(&o.Assets, "assets", "bin/controlplane", "folder with etcd, kube-apiserver and kube-controller-manager (make controlplane)")
	fs.StringVar(&o.Dir, "dir", "bin/dev", "folder for the kubeconfig, the logs and the lock")
	fs.StringVar(&o.Config, "config", "config", "keyward's config/ tree (CRDs, RBAC, admission, samples)")
	fs.StringSliceVar(&usageURLs, "usage-endpoints", nil, "metrics base URLs of more auth endpoint replicas to collect usage from, comma-separated")
	fs.StringVar(&o.PeersService, "peers-service", "", "namespace/name of a Service whose ready endpoints are the auth endpoint replicas sharing each key's limits (default: the in-process endpoint alone)")
	fs.IntVar(&o.ClientGoVerbosity, "client-go-verbosity", 0, "client-go's log verbosity (klog -v; 4 logs every watch opened and closed), into keyward.log at --zap-log-level's cap")
	o.Log = zapFlags(fs)
	c.RunE = func(c *cobra.Command, _ []string) error {
		o.UsageEndpoints = trimList(usageURLs)
		// Everything logs through the loggers RunDev gives it, into its log file.
		ctrl.SetLogger(logr.Discard())
		return app.RunDev(c.Context(), o)
	}
	return c
}

// zapFlags adds controller-runtime's zap flags (--zap-log-level,
// --zap-encoder, --zap-devel, --zap-stacktrace-level, --zap-time-encoding).
func zapFlags(fs *pflag.FlagSet) *logging.Options {
	gofs := flag.NewFlagSet("zap", flag.ContinueOnError)
	o := logging.BindFlags(gofs)
	fs.AddGoFlagSet(gofs)
	return o
}

// clusterFlags adds --kubeconfig and the zap flags to a mode that talks to a
// cluster; the returned function, called after parsing, sets up logging and
// finds the cluster.
func clusterFlags(fs *pflag.FlagSet) func() (logr.Logger, *rest.Config, error) {
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster, or $KUBECONFIG)")
	zo := zapFlags(fs)
	return func() (logr.Logger, *rest.Config, error) {
		log := logging.FromOptions(zo, os.Stderr)
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
		cfg, err := clientconfig.GetConfig()
		if err != nil {
			return log, nil, fmt.Errorf("find the cluster: %w", err)
		}
		return log, cfg, nil
	}
}

func trimList(in []string) []string {
	var out []string
	for _, p := range in {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
