package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"keyward.dev/keyward/internal/manifests"
)

// Namespace is where config/default deploys keyward, and where the local
// control plane keeps its ServiceAccounts: the admission policy that lets
// only keyward write records names the controller's ServiceAccount there.
const Namespace = "keyward-system"

// The ServiceAccounts of config/rbac.
const (
	ControllerServiceAccount = "keyward-controller"
	AuthnServiceAccount      = "keyward-authn"
)

// StartKCM runs kube-controller-manager's garbage collector, namespace
// controller and ClusterRole aggregation against a local API server, so it
// deletes owned objects and namespaces and fills the built-in admin, edit
// and view roles the way a cluster does. Each controller runs under its own
// ServiceAccount (--use-service-account-credentials, as kubeadm runs them):
// the admission policy on ApiKeyRecords lets the garbage collector and the
// namespace controller delete records by those names. Its log goes to
// dir/kube-controller-manager.log.
func StartKCM(assets, dir, kubeconfig string, out io.Writer) (stop func(), err error) {
	bin := filepath.Join(assets, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no kube-controller-manager in %s: run 'make controlplane'", assets)
	}
	logPath := filepath.Join(dir, "kube-controller-manager.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--controllers=garbagecollector,namespace,clusterrole-aggregation",
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
	)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start kube-controller-manager: %w", err)
	}
	if out != nil {
		fmt.Fprintf(out, ">> kube-controller-manager running (garbage collector, namespaces, role aggregation; log: %s)\n", logPath)
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		log.Close()
	}, nil
}

// InstallRBAC creates keyward's namespace and applies config/rbac (the
// controller's and the endpoint's roles and ServiceAccounts, the roles for
// people) in it, as config/default would.
func InstallRBAC(ctx context.Context, admin *rest.Config, config string) error {
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", Namespace, err)
	}
	for _, dir := range []string{"rbac", filepath.Join("rbac", "authn")} {
		if _, err := manifests.ApplyDirIn(ctx, admin, filepath.Join(config, dir), Namespace); err != nil {
			return fmt.Errorf("install config/%s: %w", dir, err)
		}
	}
	return nil
}

// ServiceAccountConfig returns a client configuration that authenticates
// as ServiceAccount name of keyward's namespace, with a token from the
// TokenRequest API (valid for a week): a local process then has exactly
// the identity, roles and admission treatment it has in a cluster.
func ServiceAccountConfig(ctx context.Context, admin *rest.Config, name string) (*rest.Config, error) {
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return nil, err
	}
	week := int64((7 * 24 * time.Hour).Seconds())
	tr, err := cs.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &week}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for ServiceAccount %s/%s: %w", Namespace, name, err)
	}
	cfg := rest.AnonymousClientConfig(admin)
	cfg.BearerToken = tr.Status.Token
	return cfg, nil
}

// MetricsReaderServiceAccount is the ServiceAccount in keyward's namespace
// that `keyward dev` binds to keyward-metrics-reader, as a Prometheus
// would be.
const MetricsReaderServiceAccount = "metrics-reader"

// MetricsReader creates the metrics-reader ServiceAccount, binds it to
// keyward-metrics-reader and writes a token for it (valid a week) to
// tokenFile.
func MetricsReader(ctx context.Context, admin *rest.Config, tokenFile string) error {
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: MetricsReaderServiceAccount, Namespace: Namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ServiceAccount %s/%s: %w", Namespace, sa.Name, err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "keyward-metrics-reader-dev"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "keyward-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: Namespace}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("bind %s to keyward-metrics-reader: %w", sa.Name, err)
	}
	c, err := ServiceAccountConfig(ctx, admin, sa.Name)
	if err != nil {
		return err
	}
	return os.WriteFile(tokenFile, []byte(c.BearerToken), 0o600)
}
