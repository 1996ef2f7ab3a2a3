package controllers

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/testenv"
)

// TestControllerWorksWithItsGeneratedRole runs the controller as a user
// that holds only the ClusterRole generated from the RBAC markers: issue,
// rotate, archive and delete must all work with it.
func TestControllerWorksWithItsGeneratedRole(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	role := &rbacv1.ClusterRole{}
	if err := dec.Decode(role); err != nil || role.Name != "keyward-controller" {
		t.Fatalf("first document of role.yaml: %v %q", err, role.Name)
	}
	role.Name = "keyward-controller-under-test"
	ctx := context.Background()
	create(t, role, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "keyward-under-test"}},
	})
	user, err := testEnv.AddUser(envtest.User{Name: "keyward-under-test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := namespace(t)
	startManagerWithConfig(t, user.Config(), ns)
	create(t, newKey(ns, "least"))
	key := waitReason(t, ns, "least", kw.ReasonIssued)
	verifies(t, get(t, ns, "least", &kw.ApiKeyRecord{}), get(t, ns, "least-apikey", &corev1.Secret{}))
	raise(t, ns, "least", 1, "1h")
	key = waitKeyID(t, ns, "least", key.Status.KeyID)
	verifies(t, get(t, ns, "least", &kw.ApiKeyRecord{}), get(t, ns, "least-apikey", &corev1.Secret{}))

	// Usage collection, with the same identity: it finds replicas from
	// EndpointSlices and writes usage into status.
	uc, err := client.New(user.Config(), client.Options{Scheme: NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ServiceEndpoints(uc, ns, "keyward-authn", "metrics")(ctx); err != nil {
		t.Fatalf("find replicas: %v", err)
	}
	// A replica's report (usage protocol 2): the keys counted since.
	report := fmt.Sprintf(`{"replica":"r1","id":1,"keys":[[%q,%q,3,1,0,0]]}`, ns+"/least", key.Status.KeyID)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(report)) }))
	defer srv.Close()
	cctx, stopCollector := context.WithCancel(ctx)
	collected := make(chan error, 1)
	go func() {
		collected <- (&UsageCollector{Client: uc, Endpoints: StaticEndpoints(srv.URL), Interval: 100 * time.Millisecond,
			MinWrite: time.Nanosecond, Log: captureLogger().WithValues("namespace", ns)}).Start(cctx)
	}()
	eventually(t, 10*time.Second, "the usage in status", func() (bool, string) {
		k := get(t, ns, "least", &kw.ApiKey{})
		return k.Status.Usage != nil && k.Status.Usage.Last24h == 3 && k.Status.Usage.Denied24h == 1, fmt.Sprint(k.Status.Usage)
	})
	stopCollector()
	<-collected

	key = get(t, ns, "least", &kw.ApiKey{})
	patch := client.MergeFrom(key.DeepCopy())
	key.Spec.Archived = true
	if err := k8s.Patch(ctx, key, patch); err != nil {
		t.Fatal(err)
	}
	waitReason(t, ns, "least", kw.ReasonArchived)
	if err := k8s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5e9, "the ApiKey to be gone", func() (bool, string) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(key), &kw.ApiKey{})
		return client.IgnoreNotFound(err) == nil && err != nil, "still there"
	})
	for _, l := range []string{"forbidden", "Forbidden"} {
		if n := countLines(logs.String(), ns, l); n > 0 {
			t.Errorf("%d log lines of this namespace say %s", n, l)
		}
	}
}
