package app

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
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
	var tokens map[string]string
	// versions are the resource versions of a key's Secret and record:
	// any write to either changes them.
	type versions struct{ secret, record string }
	versionsOf := func(n string) versions {
		t.Helper()
		sec, rec := &corev1.Secret{}, &kw.ApiKeyRecord{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n + "-apikey"}, sec); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, rec); err != nil {
			t.Fatal(err)
		}
		if string(sec.Data[kw.SecretKeyToken]) != tokens[n] {
			t.Errorf("%s: its token changed", n)
		}
		return versions{sec.ResourceVersion, rec.ResourceVersion}
	}
	stopFirst := startControllerWith(t, cfg)
	tokens = issue(t, ns, names...)
	for _, n := range names {
		eventually(t, 10*time.Second, n+" Active", func() bool {
			key := &kw.ApiKey{}
			return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, key) == nil && key.Status.State == kw.StateActive
		})
	}
	stopFirst()
	before := map[string]versions{}
	for _, n := range names {
		before[n] = versionsOf(n)
	}

	if _, err := manifests.ApplyDir(ctx, cfg, filepath.Join(testenv.Root(), "config", "crd", "bases")); err != nil {
		t.Fatal(err)
	}
	startController(t)
	e := startEndpoint(t, cfg, ns)
	for _, n := range names {
		eventually(t, 10*time.Second, n+" to verify on the new endpoint", func() bool { return e.check(t, tokens[n], "") == 200 })
	}
	// The new controller writes nothing for a key that is as it should
	// be, so there is no event to wait for: give it two seconds to act.
	time.Sleep(2 * time.Second)
	for _, n := range names {
		if got := versionsOf(n); got != before[n] {
			t.Errorf("%s: Secret or record written again across the reinstall (%v, was %v)", n, got, before[n])
		}
	}
}
