package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/manifests"
)

// DevOptions configure `keyward dev`.
type DevOptions struct {
	// Assets holds etcd, kube-apiserver and kube-controller-manager.
	Assets string
	// Dir receives the kubeconfig, the logs and the lock.
	Dir string
	// Config is the repository's config/ tree (CRDs, samples).
	Config string
	// Log configures keyward's log (written to Dir/keyward.log): the zap
	// flags; nil logs at info.
	Log *logging.Options
	// Out receives what a person reads.
	Out io.Writer
	// UsageEndpoints are more auth endpoint replicas (metrics base URLs)
	// whose usage the controller collects besides the in-process one.
	UsageEndpoints []string
	// PeersService is the in-process endpoint's --peers-service (empty: it
	// enforces whole limits alone).
	PeersService string
	// ClientGoVerbosity is client-go's klog verbosity (its -v): 4 logs
	// every watch the reflectors open and close, and why.
	ClientGoVerbosity int
}

// Default local addresses (DESIGN.md).
const (
	DevAuthAddr    = "127.0.0.1:8180"
	DevGRPCAddr    = "127.0.0.1:8181"
	DevMetricsAddr = "127.0.0.1:8080"
	DevHealthAddr  = "127.0.0.1:8081"
	// DevAuthnMetricsAddr serves the endpoint's /metrics and /usage.
	DevAuthnMetricsAddr = "127.0.0.1:8082"
	// DevPprofAddr serves /debug/pprof/ of the whole process (controller
	// and endpoint), on this machine only.
	DevPprofAddr = "127.0.0.1:8083"
)

// RunDev starts a local control plane, keyward on it and the samples, and
// runs until ctx is done; then it stops everything it started.
func RunDev(ctx context.Context, o DevOptions) (err error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	unlock, err := lock(o.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	for _, addr := range []string{DevAuthAddr, DevGRPCAddr, DevMetricsAddr, DevHealthAddr, DevAuthnMetricsAddr, DevPprofAddr} {
		if err := free(addr); err != nil {
			return err
		}
	}
	logFile, err := os.Create(filepath.Join(o.Dir, "keyward.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	if o.Log == nil {
		o.Log = &logging.Options{}
	}
	log := logging.FromOptions(o.Log, logFile)
	// client-go's klog goes into the same redacting, capped log; set
	// before any client exists (klog's logger is not safe to swap later).
	klog.SetLogger(log.WithName("client-go"))
	if o.ClientGoVerbosity > 0 {
		var kf flag.FlagSet
		klog.InitFlags(&kf)
		if err := kf.Set("v", strconv.Itoa(o.ClientGoVerbosity)); err != nil {
			return err
		}
	}
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, ">> "+format+"\n", args...) }

	say("starting etcd and kube-apiserver from %s", o.Assets)
	env := &envtest.Environment{
		BinaryAssetsDirectory: o.Assets,
		CRDDirectoryPaths:     []string{filepath.Join(o.Config, "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("start the local control plane: %w", err)
	}
	defer func() {
		say("stopping the local control plane")
		if serr := env.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	admin, err := env.AddUser(envtest.User{Name: "dev-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("create the admin user: %w", err)
	}
	kubeconfig := filepath.Join(o.Dir, "kubeconfig")
	kc, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	say("API server at %s, kubeconfig in %s", admin.Config().Host, kubeconfig)

	stopKCM, err := StartKCM(o.Assets, o.Dir, kubeconfig, o.Out)
	if err != nil {
		return err
	}
	defer stopKCM()

	// The controller and the endpoint run under their own ServiceAccounts,
	// bound to the roles config/rbac ships, as in a cluster: the admission
	// policies (only keyward writes records) hold locally too.
	if err := InstallRBAC(ctx, admin.Config(), o.Config); err != nil {
		return err
	}
	controllerCfg, err := ServiceAccountConfig(ctx, admin.Config(), ControllerServiceAccount)
	if err != nil {
		return err
	}
	authnCfg, err := ServiceAccountConfig(ctx, admin.Config(), AuthnServiceAccount)
	if err != nil {
		return err
	}
	say("controller and auth endpoint run as ServiceAccounts %s/%s and %s/%s", Namespace, ControllerServiceAccount,
		Namespace, AuthnServiceAccount)
	readerToken := filepath.Join(o.Dir, "metrics-reader.token")
	if err := MetricsReader(ctx, admin.Config(), readerToken); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ix := index.New()
	replica := ReplicaName()
	done := make(chan error, 2)
	go func() {
		done <- RunController(ctx, controllerCfg, ControllerOptions{
			EndpointURL: "http://" + DevAuthAddr,
			MetricsAddr: DevMetricsAddr, HealthAddr: DevHealthAddr,
			UsageEndpoints: append([]string{"https://" + DevAuthnMetricsAddr}, o.UsageEndpoints...),
			Logger:         log.WithName("controller"),
			ExtraReadyz: map[string]func(*http.Request) error{"authn-index": func(*http.Request) error {
				if !ix.Synced() {
					return errors.New("auth endpoint has not loaded the keys yet")
				}
				return nil
			}},
		})
	}()
	go func() {
		done <- RunAuthn(ctx, authnCfg, AuthnOptions{
			HTTPAddr: DevAuthAddr, GRPCAddr: DevGRPCAddr, MetricsAddr: DevAuthnMetricsAddr, PprofAddr: DevPprofAddr,
			AllowQueryKeys: true, StripCredentials: true,
			Logger: log.WithName("authn"), Index: ix, Replica: replica, PerKeyMetrics: true,
			PeersService: o.PeersService,
		})
	}()
	say("keyward controller and auth endpoint running (log: %s)", logFile.Name())

	// The admission policies as config/default ships them (restricted
	// scopes, only keyward writes records, consent labels), and the default
	// ApiKeyPolicy (write access off unless a namespace is labelled
	// keyward.dev/write-access: "true").
	for _, dir := range []string{"admission", "policy"} {
		if _, err := manifests.ApplyDir(ctx, admin.Config(), filepath.Join(o.Config, dir)); err != nil {
			return fmt.Errorf("install %s: %w", dir, err)
		}
	}
	// The banner below promises enforcement: wait until the API server
	// refuses what the policies refuse (it takes them into effect
	// asynchronously, about 2 s here).
	cl, err := client.New(admin.Config(), client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		return err
	}
	took, err := AdmissionInEffect(ctx, cl, metav1.NamespaceDefault, time.Minute)
	if err != nil {
		return fmt.Errorf("install the admission policies: %w", err)
	}
	say("admission policies in effect after %s", took.Round(100*time.Millisecond))
	say("restricted scopes: ApiKeyPolicy default restricts * and *:write to namespaces labelled keyward.dev/write-access=true")

	applied, err := manifests.ApplyDir(ctx, admin.Config(), filepath.Join(o.Config, "samples"))
	if err != nil {
		return fmt.Errorf("apply the samples: %w", err)
	}
	say("applied %d sample objects from %s", applied, filepath.Join(o.Config, "samples"))
	fmt.Fprintf(o.Out, devBanner, kubeconfig, readerToken)

	select {
	case <-ctx.Done():
		cancel()
		err1, err2 := <-done, <-done
		return errors.Join(err1, err2)
	case err := <-done:
		if err == nil {
			err = errors.New("keyward stopped")
		}
		cancel()
		<-done
		return err
	}
}

const devBanner = `
keyward is running. In another terminal:

  export KUBECONFIG=%s
  kubectl get apikeys -A
  TOKEN=$(kubectl -n keyward-demo get secret occupancy-reader-apikey -o jsonpath='{.data.token}' | base64 -d)

  curl -i -H "x-api-key: $TOKEN" 'http://127.0.0.1:8180/authn?scope=occupancy:read'    # 200
  curl -i -H "x-api-key: $TOKEN" 'http://127.0.0.1:8180/authn?scope=devices:write'     # 403
  kubectl get apikeys -A                     # CALLS-24H and LAST USED within a minute

  # rotate: a new key in the same Secret, the old one works for 5 more minutes
  kubectl -n keyward-demo patch apikey occupancy-reader --type merge -p '{"spec":{"rotation":{"generation":1,"gracePeriod":"5m"}}}'
  kubectl get apikeypolicies                 # * and *:write only where keyward.dev/write-access=true

  kubectl -n keyward-demo patch apikey occupancy-reader --type merge -p '{"spec":{"archived":true}}'
  curl -i -H "x-api-key: $TOKEN" 'http://127.0.0.1:8180/authn'                         # 401 archived

  # metrics answer only a token the API server knows, with the right role
  # (ServiceAccount keyward-system/metrics-reader, bound to keyward-metrics-reader)
  READER=$(cat %s)
  curl -sk -H "Authorization: Bearer $READER" https://127.0.0.1:8082/metrics | grep keyward_authn_decisions   # endpoint
  curl -sk -H "Authorization: Bearer $READER" https://127.0.0.1:8080/metrics | grep controller_runtime_reconcile_total   # controller
  curl -sk https://127.0.0.1:8082/metrics    # 401 without a token

Health: http://127.0.0.1:8081/readyz
Ctrl-C stops everything.
`

// lock makes sure one `keyward dev` runs per directory, and says which one
// does when a second is started.
func lock(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := io.ReadAll(f)
		f.Close()
		return nil, fmt.Errorf("keyward dev is already running (pid %s) with its kubeconfig in %s; "+
			"stop it with Ctrl-C in its terminal, or use it as it is", strings.TrimSpace(string(pid)), filepath.Join(dir, "kubeconfig"))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		_ = f.Truncate(0)
		f.Close()
	}, nil
}

func free(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s is in use, and keyward dev serves there: stop what listens on it (%w)", addr, err)
	}
	return l.Close()
}
