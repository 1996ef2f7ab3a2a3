package index

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/testenv"
)

// TestWatchResumesAfterAPIServerRestart restarts the API server (etcd
// stays) under a running index. The restarted server's watch cache starts
// at the newest resource version, older than which it refuses to resume a
// watch ("too old resource version"); the index must then list anew and
// learn what happens afterwards. It once relisted at its last resource
// version, page by page, which the API server reads from etcd at exactly
// that version: the same old list, the same refused watch, round after
// round, until etcd compacted that version (five minutes). Meanwhile no
// new key worked and, worse, no archived key was refused, while the
// watches looked fresh.
func TestWatchResumesAfterAPIServerRestart(t *testing.T) {
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	// The API server goes as in a crash: killed when it has not stopped
	// within a second of SIGTERM (its open watches would hold it 20 s).
	env.ControlPlaneStopTimeout = time.Second
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	// envtest gives the restarted API server a serving certificate from a
	// new CA (the client CA stays): these clients skip verifying it, which
	// is not what this test is about.
	cfg = rest.CopyConfig(cfg)
	cfg.CAData, cfg.Insecure = nil, true
	s := runtime.NewScheme()
	if err := kw.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	const ns = "restart"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	// An ApiKey and the record its controller would write: the index needs
	// nothing else to serve a key.
	issue := func(name string) (keys.Key, *kw.ApiKey) {
		t.Helper()
		k, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		key := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: kw.ApiKeySpec{Scopes: []kw.Scope{"occupancy:read"}}}
		if err := c.Create(ctx, key); err != nil {
			t.Fatal(err)
		}
		yes := true
		rec := &kw.ApiKeyRecord{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: kw.GroupVersion.String(), Kind: "ApiKey",
				Name: name, UID: key.UID, Controller: &yes}}},
			Spec: kw.ApiKeyRecordSpec{Keys: []kw.RecordedKey{{KeyID: k.ID, Digest: k.Digest(), IssuedAt: metav1.Now()}}}}
		if err := c.Create(ctx, rec); err != nil {
			t.Fatal(err)
		}
		return k, key
	}
	// serves reports whether the index serves k, and whether as archived.
	serves := func(ix *Index, k keys.Key) (found, archived bool) {
		e, ok := ix.Lookup(k.ID)
		return ok && e.Sum.Matches(k.Secret), e.Archived
	}

	ix := New()
	if err := Watch(ctx, cfg, ix); err != nil {
		t.Fatal(err)
	}
	old, oldKey := issue("before-restart")
	waitFor(t, 10*time.Second, "the key issued before the restart to be served", func() bool { f, _ := serves(ix, old); return f })
	// Writes of other kinds move the cluster's resource version on, past
	// the last one the index saw of its own kinds.
	for i := range 5 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("other-%d", i)}}
		if err := c.Create(ctx, cm); err != nil {
			t.Fatal(err)
		}
	}

	if err := env.ControlPlane.APIServer.Stop(); err != nil && !strings.Contains(err.Error(), "timeout waiting for process") {
		t.Fatal(err)
	}
	if err := env.ControlPlane.APIServer.Start(); err != nil {
		t.Fatal(err)
	}

	restarted := time.Now()
	fresh, _ := issue("after-restart")
	patch := client.MergeFrom(oldKey.DeepCopy())
	oldKey.Spec.Archived = true
	if err := c.Patch(ctx, oldKey, patch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a key issued after the restart to be served", func() bool { f, _ := serves(ix, fresh); return f })
	waitFor(t, 30*time.Second, "a key archived after the restart to be refused", func() bool {
		f, archived := serves(ix, old)
		return !f || archived
	})
	t.Logf("the index caught up %s after the API server was back", time.Since(restarted).Round(time.Millisecond))
	// And every watch is open again: the index no longer ages.
	waitFor(t, 15*time.Second, "every watch to be open again", func() bool { return ix.Staleness(time.Now()) == 0 })
}

// waitFor waits until cond holds (testenv.Eventually).
var waitFor = testenv.Eventually
