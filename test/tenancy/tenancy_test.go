// Package tenancy attacks keyward as tenants would: users impersonated and
// bound to Kubernetes' built-in roles (into which keyward's roles for
// people aggregate) try to take over, forge or unlock another namespace's
// key, against the real API server with every admission policy of
// config/admission, the controller and the endpoint running under their
// own ServiceAccounts, and kube-controller-manager aggregating the roles.
// The victim's key is checked with the real endpoint before, during and
// after every attack.
package tenancy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/controllers"
	"keyward.dev/keyward/internal/app"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

var (
	cfg      *rest.Config
	admin    client.Client
	endpoint string
	ix       = index.New()
	// The metrics servers of the endpoint and the controller, and tokens
	// of the controller's and a metrics reader's ServiceAccounts.
	authnMetrics, ctrlMetrics    string
	controllerToken, readerToken string
	metricsDir                   string
	// A kubeconfig of a cluster admin, for the real kubectl (which
	// impersonates tenants with --as).
	adminKubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	env, c, err := testenv.Start()
	if err != nil {
		return fail(err)
	}
	defer func() { _ = env.Stop() }()
	cfg = c
	if admin, err = client.New(cfg, client.Options{Scheme: controllers.NewScheme()}); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dir, err := os.MkdirTemp("", "keyward-tenancy")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	root, err := env.AddUser(envtest.User{Name: "kcm-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(err)
	}
	kc, err := root.KubeConfig()
	if err != nil {
		return fail(err)
	}
	adminKubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(adminKubeconfig, kc, 0o600); err != nil {
		return fail(err)
	}
	stopKCM, err := app.StartKCM(os.Getenv("KUBEBUILDER_ASSETS"), dir, adminKubeconfig, nil)
	if err != nil {
		return fail(err)
	}
	defer stopKCM()

	config := filepath.Join(testenv.Root(), "config")
	if err := app.InstallRBAC(ctx, cfg, config); err != nil {
		return fail(err)
	}
	for _, d := range []string{"admission", "policy"} {
		if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(config, d)); err != nil {
			return fail(err)
		}
	}
	// Every attack below assumes the policies refuse it: wait until they do.
	if took, err := app.AdmissionInEffect(ctx, admin, "default", time.Minute); err != nil {
		return fail(err)
	} else if took > 5*time.Second {
		fmt.Fprintf(os.Stderr, "the admission policies took %s to take effect\n", took.Round(time.Millisecond))
	}
	ctrlCfg, err := app.ServiceAccountConfig(ctx, cfg, app.ControllerServiceAccount)
	if err != nil {
		return fail(err)
	}
	authnCfg, err := app.ServiceAccountConfig(ctx, cfg, app.AuthnServiceAccount)
	if err != nil {
		return fail(err)
	}
	controllerToken = ctrlCfg.BearerToken
	metricsDir = dir
	if err := app.MetricsReader(ctx, cfg, filepath.Join(dir, "reader.token")); err != nil {
		return fail(err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "reader.token"))
	if err != nil {
		return fail(err)
	}
	readerToken = string(tok)
	addr, health := freeAddr(), freeAddr()
	authnMetrics, ctrlMetrics = freeAddr(), freeAddr()
	done := make(chan error, 2)
	go func() {
		done <- app.RunController(ctx, ctrlCfg, app.ControllerOptions{EndpointURL: "http://example.test",
			MetricsAddr: ctrlMetrics, HealthAddr: "0", Logger: logging.New(io.Discard, 0),
			UsageEndpoints: []string{"https://" + authnMetrics}, UsageInterval: time.Second})
	}()
	go func() {
		done <- app.RunAuthn(ctx, authnCfg, app.AuthnOptions{HTTPAddr: addr, GRPCAddr: freeAddr(), HealthAddr: health,
			MetricsAddr: authnMetrics, Logger: logging.New(io.Discard, 0), Index: ix, PerKeyMetrics: true})
	}()
	endpoint = "http://" + addr
	defer func() { cancel(); <-done; <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for !ready(health) || !listening(authnMetrics) || !listening(ctrlMetrics) {
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the endpoint never became ready"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m.Run()
}

func ready(health string) bool {
	resp, err := http.Get("http://" + health + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func listening(addr string) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func freeAddr() string {
	addr, err := testenv.FreeAddr()
	if err != nil {
		panic(err)
	}
	return addr
}

// as returns a client that acts as user (impersonated), a member of groups.
func as(t *testing.T, user string, groups ...string) client.Client {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	cl, err := client.New(c, client.Options{Scheme: controllers.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// tenant creates namespace ns (labels set by the admin) and binds user to
// the built-in ClusterRole role there.
func tenant(t *testing.T, ns string, labels map[string]string, user, role string) {
	t.Helper()
	ctx := context.Background()
	must(t, admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}))
	must(t, admin.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: user + "-" + role},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}))
}

func eventually(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s; last: %s", within, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check asks the endpoint about a token, as a gateway would.
func check(t *testing.T, token string) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", endpoint+"/authn", nil)
	req.Header.Set("x-api-key", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// victimKey is the key every attack is aimed at.
type victimKey struct {
	id, token, key string
}

// holds checks the victim's key answers 200 with its own identity.
func (v victimKey) holds(t *testing.T, when string) {
	t.Helper()
	code, h := check(t, v.token)
	if code != 200 || h.Get("X-Keyward-Key-Id") != v.id || h.Get("X-Keyward-Key") != v.key {
		t.Fatalf("%s: the victim's key answered %d as %s (%s)", when, code, h.Get("X-Keyward-Key"), h.Get("X-Keyward-Key-Id"))
	}
}

// issue creates an ApiKey as user c and waits for its token.
func issue(t *testing.T, c client.Client, ns, name string) (string, string) {
	t.Helper()
	ctx := context.Background()
	must(t, c.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"payments:read"}}}))
	return awaitKey(t, c, ns, name)
}

// awaitKey waits for an ApiKey's Secret and for the endpoint to verify its
// token, and returns its key ID and token.
func awaitKey(t *testing.T, c client.Client, ns, name string) (string, string) {
	t.Helper()
	ctx := context.Background()
	sec := &corev1.Secret{}
	eventually(t, 20*time.Second, "the key of "+ns+"/"+name, func() (bool, string) {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name + "-apikey"}, sec)
		return err == nil, fmt.Sprint(err)
	})
	token := string(sec.Data[kw.SecretKeyToken])
	id, _, err := keys.Parse(token)
	must(t, err)
	eventually(t, 5*time.Second, "the endpoint to verify "+name, func() (bool, string) {
		code, _ := check(t, token)
		return code == 200, fmt.Sprint(code)
	})
	return id, token
}

// forged is a well-formed token for key ID id with a secret of the
// attacker's choosing: the checksum is public.
func forged(t *testing.T, id string) string {
	k, err := keys.Generate()
	must(t, err)
	k.ID = id
	return k.Token()
}

func reason(t *testing.T, ns, name string) (string, string) {
	t.Helper()
	k := &kw.ApiKey{}
	must(t, admin.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, k))
	if c := meta.FindStatusCondition(k.Status.Conditions, kw.ConditionReady); c != nil {
		return c.Reason, c.Message
	}
	return "", ""
}

func TestTenantsCannotTakeOverForgeOrUnlockKeys(t *testing.T) {
	ctx := context.Background()
	tenant(t, "victim", nil, "victor", "edit")
	tenant(t, "evil", map[string]string{"keyward.dev/write-access": "true"}, "mallory", "edit")
	// Mallory may also create and label namespaces (self-service).
	must(t, admin.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "self-service-namespaces"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"},
			Verbs: []string{"get", "list", "create", "update", "patch"}}}}))
	must(t, admin.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "mallory-self-service"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "self-service-namespaces"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "mallory"}}}))
	victor, mallory := as(t, "victor"), as(t, "mallory")
	// The built-in edit role gets keyward's rules from kube-controller-manager.
	eventually(t, 30*time.Second, "edit to aggregate keyward's role", func() (bool, string) {
		err := victor.List(ctx, &kw.ApiKeyList{}, client.InNamespace("victim"))
		return err == nil, fmt.Sprint(err)
	})
	id, token := issue(t, victor, "victim", "payments")
	v := victimKey{id: id, token: token, key: "victim/payments"}
	v.holds(t, "before any attack")

	t.Run("1 key-ID takeover with a planted Secret", func(t *testing.T) {
		bad := forged(t, v.id)
		must(t, mallory.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: "stolen",
				Labels:      map[string]string{kw.LabelManagedBy: kw.ManagedByValue, kw.LabelApiKey: "takeover"},
				Annotations: map[string]string{kw.AnnotationKeyID: v.id}},
			Type: controllers.SecretType,
			Data: map[string][]byte{kw.SecretKeyToken: []byte(bad), kw.SecretKeyKeyID: []byte(v.id)},
		}))
		must(t, mallory.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: "takeover"},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"payments:read"}, SecretName: "stolen"}}))
		eventually(t, 10*time.Second, "KeyIdConflict", func() (bool, string) {
			r, m := reason(t, "evil", "takeover")
			return r == kw.ReasonKeyIdConflict, r + ": " + m
		})
		if _, m := reason(t, "evil", "takeover"); !strings.Contains(m, "belongs to ApiKey victim/payments") {
			t.Fatalf("message: %s", m)
		}
		err := admin.Get(ctx, client.ObjectKey{Namespace: "evil", Name: "takeover"}, &kw.ApiKeyRecord{})
		if !apierrors.IsNotFound(err) {
			t.Fatalf("a record was written for the attacker: %v", err)
		}
		sec := &corev1.Secret{}
		must(t, mallory.Get(ctx, client.ObjectKey{Namespace: "evil", Name: "stolen"}, sec))
		if len(sec.OwnerReferences) != 0 {
			t.Fatalf("keyward adopted the attacker's Secret: %v", sec.OwnerReferences)
		}
		var events corev1.EventList
		eventually(t, 10*time.Second, "a KeyIdConflict Event", func() (bool, string) {
			must(t, admin.List(ctx, &events, client.InNamespace("evil")))
			for _, e := range events.Items {
				if e.Reason == kw.ReasonKeyIdConflict && e.InvolvedObject.Name == "takeover" {
					return true, ""
				}
			}
			return false, fmt.Sprint(len(events.Items), " events")
		})
		if code, _ := check(t, bad); code != 401 {
			t.Fatalf("the forged token answered %d", code)
		}
		v.holds(t, "during the takeover")
		must(t, mallory.Delete(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: "takeover"}}))
		must(t, client.IgnoreNotFound(mallory.Delete(ctx, sec)))
		v.holds(t, "after the attacker deleted everything")
	})

	t.Run("1b key-ID takeover through a rotation written into the Secret", func(t *testing.T) {
		_, own := issue(t, mallory, "evil", "rotator")
		bad := forged(t, v.id)
		sec := &corev1.Secret{}
		must(t, mallory.Get(ctx, client.ObjectKey{Namespace: "evil", Name: "rotator-apikey"}, sec))
		patch := client.MergeFrom(sec.DeepCopy())
		sec.Annotations[kw.AnnotationKeyID], sec.Annotations[kw.AnnotationGeneration] = v.id, "1"
		sec.Data[kw.SecretKeyToken] = []byte(bad)
		must(t, mallory.Patch(ctx, sec, patch))
		key := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: "rotator"}}
		must(t, mallory.Patch(ctx, key, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"rotation":{"generation":1}}}`))))
		eventually(t, 10*time.Second, "KeyIdConflict", func() (bool, string) {
			r, m := reason(t, "evil", "rotator")
			return r == kw.ReasonKeyIdConflict, r + ": " + m
		})
		rec := &kw.ApiKeyRecord{}
		must(t, admin.Get(ctx, client.ObjectKey{Namespace: "evil", Name: "rotator"}, rec))
		for _, k := range rec.Spec.Keys {
			if k.KeyID == v.id {
				t.Fatal("the victim's key ID was recorded for the attacker")
			}
		}
		if code, _ := check(t, bad); code != 401 {
			t.Fatalf("the forged token answered %d", code)
		}
		if code, _ := check(t, own); code != 200 {
			t.Fatalf("the attacker's own key answered %d", code)
		}
		v.holds(t, "after the rotation attempt")
	})

	t.Run("2 records are written by keyward only", func(t *testing.T) {
		// A user explicitly granted every verb on records, and a cluster
		// admin, are both refused by admission; the edit role by RBAC.
		must(t, admin.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "records-writer"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"keyward.dev"}, Resources: []string{"apikeyrecords"}, Verbs: []string{"*"}}}}))
		must(t, admin.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "trent-records-writer"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "records-writer"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "trent"}}}))
		const byAdmission = "ApiKeyRecords are written by keyward only"
		rec := &kw.ApiKeyRecord{}
		must(t, admin.Get(ctx, client.ObjectKey{Namespace: "victim", Name: "payments"}, rec))
		mine := forged(t, v.id)
		_, secret, _ := keys.Parse(mine)
		for _, u := range []struct {
			who    string
			c      client.Client
			refuse string
		}{
			{"mallory (edit)", mallory, "forbidden"},
			{"trent (granted records)", as(t, "trent"), byAdmission},
			{"a cluster admin (system:masters)", as(t, "root", "system:masters"), byAdmission},
		} {
			t.Run(u.who, func(t *testing.T) {
				attempts := map[string]error{}
				planted := &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: "planted"},
					Spec: kw.ApiKeyRecordSpec{Keys: []kw.RecordedKey{{KeyID: v.id, Digest: keys.Digest(secret), IssuedAt: metav1.Now()}}}}
				attempts["create a record with a digest of their choosing"] = u.c.Create(ctx, planted)
				added := rec.DeepCopy()
				added.Spec.Keys = append(added.Spec.Keys, kw.RecordedKey{KeyID: "AAAAAAAAAAAAAAAA", Digest: keys.Digest(secret), IssuedAt: metav1.Now()})
				attempts["add a digest to the victim's record"] = u.c.Update(ctx, added)
				attempts["delete the victim's record"] = u.c.Delete(ctx, rec.DeepCopy())
				for what, err := range attempts {
					if err == nil || !strings.Contains(err.Error(), u.refuse) {
						t.Errorf("%s: %v; want a refusal saying %q", what, err, u.refuse)
					}
				}
				v.holds(t, "after "+u.who+" tried to write records")
			})
		}
	})

	t.Run("3 full access slips past no narrower policy", func(t *testing.T) {
		must(t, admin.Create(ctx, &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "billing"},
			Spec: kw.ApiKeyPolicySpec{RestrictedScopes: []kw.Scope{"billing:*"}}}))
		defer func() { _ = admin.Delete(ctx, &kw.ApiKeyPolicy{ObjectMeta: metav1.ObjectMeta{Name: "billing"}}) }()
		try := func(name string, scopes ...kw.Scope) error {
			return mallory.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: name},
				Spec: kw.ApiKeySpec{Scopes: scopes}})
		}
		eventually(t, 20*time.Second, "policy billing to take effect", func() (bool, string) {
			err := try("probe", "billing:read")
			return err != nil, fmt.Sprint(err)
		})
		for _, s := range []kw.Scope{"*", "*:read", "*:*", "billing:*"} {
			err := try("greedy", s)
			if err == nil || !strings.Contains(err.Error(), "scope "+string(s)+" is restricted by ApiKeyPolicy billing") {
				t.Errorf("scope %s in a namespace refused billing: %v", s, err)
			}
		}
		// What the namespace may grant still passes (write access is allowed there).
		must(t, try("writer", "devices:write"))
		v.holds(t, "after the policy attempts")
	})

	t.Run("4 consent cannot be self-granted", func(t *testing.T) {
		const refusal = "needs the right to update ApiKeyPolicies"
		err := mallory.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "selfserve",
			Labels: map[string]string{"keyward.dev/write-access": "true"}}})
		if err == nil || !strings.Contains(err.Error(), refusal) {
			t.Errorf("a labelled self-service namespace: %v", err)
		}
		must(t, mallory.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "selfserve-plain"}}))
		for what, change := range map[string]func(*corev1.Namespace){
			"label a new namespace":     func(n *corev1.Namespace) { n.Labels["keyward.dev/write-access"] = "true" },
			"another keyward.dev label": func(n *corev1.Namespace) { n.Labels["keyward.dev/anything"] = "x" },
		} {
			n := &corev1.Namespace{}
			must(t, mallory.Get(ctx, client.ObjectKey{Name: "selfserve-plain"}, n))
			change(n)
			if err := mallory.Update(ctx, n); err == nil || !strings.Contains(err.Error(), refusal) {
				t.Errorf("%s: %v", what, err)
			}
		}
		n := &corev1.Namespace{}
		must(t, mallory.Get(ctx, client.ObjectKey{Name: "evil"}, n))
		delete(n.Labels, "keyward.dev/write-access")
		if err := mallory.Update(ctx, n); err == nil || !strings.Contains(err.Error(), refusal) {
			t.Errorf("removing a consent label: %v", err)
		}
		// Other labels stay the tenant's own.
		must(t, mallory.Get(ctx, client.ObjectKey{Name: "evil"}, n))
		n.Labels["team"] = "evil"
		must(t, mallory.Update(ctx, n))
		// Whoever may edit ApiKeyPolicies may label.
		must(t, admin.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "peggy-policy-admin"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "keyward-policy-admin"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "peggy"}}}))
		must(t, admin.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "peggy-namespaces"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "self-service-namespaces"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "peggy"}}}))
		peggy := as(t, "peggy")
		must(t, peggy.Get(ctx, client.ObjectKey{Name: "selfserve-plain"}, n))
		n.Labels["keyward.dev/write-access"] = "true"
		must(t, peggy.Update(ctx, n))
		v.holds(t, "after the consent attempts")
	})

	t.Run("readers read keys, not Secrets", func(t *testing.T) {
		must(t, admin.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: "victim", Name: "walter-view"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "walter"}}}))
		walter := as(t, "walter")
		var list kw.ApiKeyList
		must(t, walter.List(ctx, &list, client.InNamespace("victim")))
		if len(list.Items) != 1 || list.Items[0].Status.KeyID != v.id {
			t.Fatalf("a reader sees %v", list.Items)
		}
		if err := walter.Get(ctx, client.ObjectKey{Namespace: "victim", Name: "payments-apikey"}, &corev1.Secret{}); !apierrors.IsForbidden(err) {
			t.Fatalf("a reader read the Secret: %v", err)
		}
		if err := walter.Create(ctx, &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "victim", Name: "mine"},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"payments:read"}}}); !apierrors.IsForbidden(err) {
			t.Fatalf("a reader created an ApiKey: %v", err)
		}
		if err := mallory.Get(ctx, client.ObjectKey{Namespace: "victim", Name: "payments"}, &kw.ApiKey{}); !apierrors.IsForbidden(err) {
			t.Fatalf("another namespace's editor read the ApiKey: %v", err)
		}
	})
	t.Run("5 the garbage collector and the namespace controller still delete records", func(t *testing.T) {
		// The allow-list of keyward-records-writers names them: a wrong
		// name would leave records behind deleted ApiKeys and keep
		// namespaces from ever finishing their deletion.
		issue(t, mallory, "evil", "collected")
		for name, user := range map[string]string{
			"collected": "system:serviceaccount:kube-system:generic-garbage-collector",
			"rotator":   "system:serviceaccount:kube-system:namespace-controller",
		} {
			c := as(t, user, "system:serviceaccounts", "system:serviceaccounts:kube-system")
			must(t, c.Delete(ctx, &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: name}}))
		}
		must(t, admin.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "evil"}}))
		eventually(t, 60*time.Second, "namespace evil to be deleted", func() (bool, string) {
			n := &corev1.Namespace{}
			err := admin.Get(ctx, client.ObjectKey{Name: "evil"}, n)
			return apierrors.IsNotFound(err), fmt.Sprint(err, n.Status.Conditions)
		})
		v.holds(t, "after the attacker's namespace is gone")
	})
	if n := ix.Contested(); n != 0 {
		t.Errorf("%d key IDs are contested in the endpoint's index", n)
	}
	v.holds(t, "at the end")
}
