package app

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

// TestReinstallKeepsEveryKey removes keyward (controller and endpoint
// stopped), applies the CRDs again as an upgrade or a reinstall does, and
// starts a new controller and endpoint: every key verifies on the new
// endpoint, and no Secret or record was written again (same resource
// versions), so nothing was reissued.
func TestReinstallKeepsEveryKey(t *testing.T) {
	ns := namespace(t, "reinstall")
	ctx := context.Background()
	names := make([]string, 30)
	for i := range names {
		names[i] = fmt.Sprintf("k%02d", i)
	}
	type versions struct{ secret, record string }
	var tokens map[string]string
	before := map[string]versions{}
	{
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- RunController(ctx, cfg, ControllerOptions{EndpointURL: "http://example.test", MetricsAddr: "0",
				HealthAddr: "0", Logger: logging.New(io.Discard, 0), AgainInProcess: true})
		}()
		tokens = issue(t, ns, names...)
		for _, n := range names {
			eventually(t, 10*time.Second, n+" Active", func() bool {
				key := &kw.ApiKey{}
				return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, key) == nil && key.Status.State == kw.StateActive
			})
		}
		cancel()
		<-done
	}
	for _, n := range names {
		sec, rec := &corev1.Secret{}, &kw.ApiKeyRecord{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n + "-apikey"}, sec); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, rec); err != nil {
			t.Fatal(err)
		}
		before[n] = versions{sec.ResourceVersion, rec.ResourceVersion}
	}

	if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", "crd", "bases")); err != nil {
		t.Fatal(err)
	}
	startController(t)
	e := startEndpoint(t, cfg, ns)
	for _, n := range names {
		eventually(t, 10*time.Second, n+" to verify on the new endpoint", func() bool { return e.check(t, tokens[n], "") == 200 })
	}
	time.Sleep(2 * time.Second) // the new controller has reconciled every key by now
	for _, n := range names {
		sec, rec := &corev1.Secret{}, &kw.ApiKeyRecord{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n + "-apikey"}, sec); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, rec); err != nil {
			t.Fatal(err)
		}
		if got := (versions{sec.ResourceVersion, rec.ResourceVersion}); got != before[n] {
			t.Errorf("%s: Secret or record written again across the reinstall (%v, was %v)", n, got, before[n])
		}
		if string(sec.Data[kw.SecretKeyToken]) != tokens[n] {
			t.Errorf("%s: its token changed", n)
		}
	}
}
