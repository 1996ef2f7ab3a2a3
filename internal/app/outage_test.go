package app

import (
	"bytes"
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// TestAPIServerOutage takes the API server away from keyward (the
// controller and the endpoint) for 30 s under load: the endpoint keeps
// answering from its index, a key archived before the outage stays
// refused, one archived after it is refused once keyward is back, and no
// key is issued anew (every Secret and record as before).
func TestAPIServerOutage(t *testing.T) {
	ns := namespace(t, "apiserver-outage")
	link, viaLink := linkedConfig(t)
	startControllerWith(t, viaLink)
	e := startEndpoint(t, viaLink, ns)
	tokens := issue(t, ns, "steady", "before", "after")
	for _, n := range []string{"steady", "before", "after"} {
		eventually(t, 10*time.Second, n+" to verify", func() bool { return e.check(t, tokens[n], "") == 200 })
	}
	ctx := context.Background()
	archive := func(name string) {
		t.Helper()
		key := &kw.ApiKey{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, key); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(key.DeepCopy())
		key.Spec.Archived = true
		if err := k8s.Patch(ctx, key, patch); err != nil {
			t.Fatal(err)
		}
	}
	archive("before")
	eventually(t, 10*time.Second, "the key archived before the outage to be refused", func() bool { return e.check(t, tokens["before"], "") == 401 })
	snapshot := func() map[string][]byte {
		out := map[string][]byte{}
		for _, n := range []string{"steady", "after"} {
			rec := &kw.ApiKeyRecord{}
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, rec); err != nil {
				t.Fatal(err)
			}
			if len(rec.Spec.Keys) != 1 {
				t.Fatalf("record %s holds %d keys", n, len(rec.Spec.Keys))
			}
			out[n] = []byte(rec.Spec.Keys[0].Digest + rec.Spec.Keys[0].KeyID)
		}
		// The Secret of the key that stays (the archived one's goes).
		sec := &corev1.Secret{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "steady-apikey"}, sec); err != nil {
			t.Fatal(err)
		}
		out["steady Secret"] = append([]byte{}, sec.Data[kw.SecretKeyToken]...)
		return out
	}
	was := snapshot()

	link.cut()
	var served int
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		if code := e.check(t, tokens["steady"], "occupancy:read"); code != 200 {
			t.Fatalf("during the outage a good key got %d", code)
		}
		if code := e.check(t, tokens["before"], ""); code != 401 {
			t.Fatalf("during the outage the key archived before it got %d", code)
		}
		served++
		time.Sleep(10 * time.Millisecond)
	}
	link.restore(t)

	archive("after")
	eventually(t, 60*time.Second, "the key archived after the outage to be refused", func() bool { return e.check(t, tokens["after"], "") == 401 })
	// The controller's informers retry a lost watch with client-go's
	// backoff, which grows to 30 s during the cut: give it that, a list and
	// a reconcile, as the endpoint's watch is given above.
	restored := time.Now()
	eventually(t, 60*time.Second, "the controller to record the archival", func() bool {
		rec := &kw.ApiKeyRecord{}
		return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "after"}, rec) == nil && rec.Spec.Revoked
	})
	t.Logf("the controller recorded the archival %s after the API server came back", time.Since(restored).Round(100*time.Millisecond))
	if code := e.check(t, tokens["steady"], ""); code != 200 {
		t.Fatalf("after the outage a good key got %d", code)
	}
	now := snapshot()
	for n := range was {
		if !bytes.Equal(was[n], now[n]) {
			t.Errorf("%s: its key changed across the outage", n)
		}
	}
	t.Logf("%d checks answered during the 30 s outage", served)
}
