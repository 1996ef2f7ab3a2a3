package controllers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// crashy is the controller's client in a process that dies at its n-th
// write from now: that write is made or not (the process died just before
// or just after it), and nothing after it, until the test revives it as a
// restarted process.
type crashy struct {
	client.Client
	dead      *atomic.Bool
	countdown *atomic.Int64
	crashes   *atomic.Int64
}

// write runs w unless the process is dead; at the countdown's end it dies,
// with the write made or not at random.
func (c crashy) write(w func() error) error {
	if c.dead.Load() {
		return errDead
	}
	if c.countdown.Add(-1) != 0 {
		return w()
	}
	c.crashes.Add(1)
	if rand.IntN(2) == 0 {
		c.dead.Store(true)
		return errDead
	}
	err := w()
	c.dead.Store(true)
	if err != nil {
		return err
	}
	return errDead
}

func (c crashy) Create(ctx context.Context, o client.Object, opts ...client.CreateOption) error {
	return c.write(func() error { return c.Client.Create(ctx, o, opts...) })
}
func (c crashy) Patch(ctx context.Context, o client.Object, p client.Patch, opts ...client.PatchOption) error {
	return c.write(func() error { return c.Client.Patch(ctx, o, p, opts...) })
}
func (c crashy) Update(ctx context.Context, o client.Object, opts ...client.UpdateOption) error {
	return c.write(func() error { return c.Client.Update(ctx, o, opts...) })
}
func (c crashy) Delete(ctx context.Context, o client.Object, opts ...client.DeleteOption) error {
	return c.write(func() error { return c.Client.Delete(ctx, o, opts...) })
}
func (c crashy) Status() client.SubResourceWriter { return crashyStatus{c.Client.Status(), c} }

type crashyStatus struct {
	client.SubResourceWriter
	c crashy
}

func (w crashyStatus) Patch(ctx context.Context, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
	return w.c.write(func() error { return w.SubResourceWriter.Patch(ctx, o, p, opts...) })
}
func (w crashyStatus) Update(ctx context.Context, o client.Object, opts ...client.SubResourceUpdateOption) error {
	return w.c.write(func() error { return w.SubResourceWriter.Update(ctx, o, opts...) })
}

// TestCrashAnywhere kills the controller at a random write, 1,000 times,
// while keys are issued, rotated, archived and deleted, and checks after
// every crash that no key was ever drawn twice for one ApiKey and
// generation, and at the end that every live key's Secret verifies against
// its record and every archived or deleted key is revoked.
//
// A crash is the controller's client refusing every write from a random
// one on (made or not, at random), as a dead process makes none; a restart
// is the client writing again, with the queue retrying what failed (the
// cache stands in for the one a new process would list).
func TestCrashAnywhere(t *testing.T) {
	t.Parallel()
	const keysN = 40
	crashesN := int64(1000)
	if testing.Short() {
		crashesN = 100
	}
	ns := namespace(t)
	var dead atomic.Bool
	var countdown, crashes atomic.Int64
	countdown.Store(1 << 40)
	startManager(t, ns, func(r *ApiKeyReconciler) {
		r.Client = crashy{r.Client, &dead, &countdown, &crashes}
		r.RateLimiter = workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](2*time.Millisecond, 50*time.Millisecond)
	})
	ctx := context.Background()
	name := func(i int) string { return fmt.Sprintf("c%04d", i) }
	for i := range keysN {
		create(t, newKey(ns, name(i)))
	}

	// drawn: the key ID each ApiKey got for each generation; a second one
	// is a key drawn again.
	drawn := map[string]string{}
	saw := func(apikey string, gen int64, id string) {
		k := fmt.Sprintf("%s@%d", apikey, gen)
		if was, ok := drawn[k]; ok && was != id {
			t.Fatalf("after %d crashes: %s generation %d has key %s, earlier %s: a key was drawn again",
				crashes.Load(), apikey, gen, id, was)
		}
		drawn[k] = id
	}
	observe := func() {
		var recs kw.ApiKeyRecordList
		if err := k8s.List(ctx, &recs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs.Items {
			for _, k := range r.Spec.Keys {
				saw(r.Name, k.Generation, k.KeyID)
			}
		}
		var secs corev1.SecretList
		if err := k8s.List(ctx, &secs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for i := range secs.Items {
			s := &secs.Items[i]
			remember(s)
			var gen int64
			fmt.Sscan(s.Annotations[kw.AnnotationGeneration], &gen)
			saw(s.Labels[kw.LabelApiKey], gen, string(s.Data[kw.SecretKeyKeyID]))
		}
	}

	// What users do meanwhile, one at a time: rotate, archive, delete, and
	// create a new key in place of each archived or deleted one.
	rotated, archived, deleted := map[int]int64{}, map[int]bool{}, map[int]bool{}
	live := make([]int, keysN)
	for i := range live {
		live[i] = i
	}
	next := keysN
	act := func(step int) {
		j := rand.IntN(len(live))
		i := live[j]
		key := &kw.ApiKey{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name(i)}, key); err != nil {
			t.Fatal(err)
		}
		before := key.DeepCopy()
		switch {
		case step%7 == 3:
			archived[i] = true
			key.Spec.Archived = true
		case step%11 == 5:
			deleted[i] = true
			if err := k8s.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		default:
			rotated[i]++
			key.Spec.Rotation = &kw.Rotation{Generation: rotated[i], GracePeriod: &metav1.Duration{Duration: time.Hour}}
		}
		if !deleted[i] {
			if err := k8s.Patch(ctx, key, client.MergeFrom(before)); err != nil {
				t.Fatal(err)
			}
		}
		if archived[i] || deleted[i] {
			live[j] = next
			create(t, newKey(ns, name(next)))
			next++
		}
	}

	for step := 0; crashes.Load() < crashesN; step++ {
		if int64(step) > 20*crashesN {
			t.Fatalf("only %d crashes in %d steps", crashes.Load(), step)
		}
		// A restarted process, a user's action, and a crash at one of the
		// next few writes.
		countdown.Store(int64(1 + rand.IntN(6)))
		dead.Store(false)
		act(step)
		deadline := time.Now().Add(100 * time.Millisecond)
		for !dead.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if !dead.Load() {
			continue
		}
		time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond) // reconciles in flight fail
		observe()
		if n := crashes.Load(); n%100 == 0 {
			t.Logf("%d crashes after %d steps", n, step)
		}
	}
	t.Logf("%d crashes, %d rotations, %d archived, %d deleted", crashes.Load(), len(rotated), len(archived), len(deleted))

	// Restart for good and let it settle.
	countdown.Store(1 << 40)
	dead.Store(false)
	for i := range next {
		n := name(i)
		switch {
		case deleted[i]:
			eventually(t, 30*time.Second, "deleted "+n+" gone with its record", func() (bool, string) {
				errKey := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, &kw.ApiKey{})
				errRec := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, &kw.ApiKeyRecord{})
				return client.IgnoreNotFound(errKey) == nil && errKey != nil && errRec != nil, fmt.Sprint(errKey, errRec)
			})
		case archived[i]:
			waitReason(t, ns, n, kw.ReasonArchived)
			// Archived before its key was issued, it has no record.
			rec := &kw.ApiKeyRecord{}
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, rec); client.IgnoreNotFound(err) != nil {
				t.Fatal(err)
			} else if err == nil && !rec.Spec.Revoked {
				t.Errorf("archived %s: record not revoked", n)
			}
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: n + "-apikey"}, &corev1.Secret{}); err == nil {
				t.Errorf("archived %s: its Secret is still there", n)
			}
		default:
			key := waitReason(t, ns, n, kw.ReasonIssued)
			eventually(t, 30*time.Second, n+" at its generation", func() (bool, string) {
				key = get(t, ns, n, &kw.ApiKey{})
				rec := get(t, ns, n, &kw.ApiKeyRecord{})
				cur := rec.Current()
				return cur != nil && cur.Generation == key.DesiredGeneration() && key.Status.KeyID == cur.KeyID,
					fmt.Sprintf("record at %+v, want generation %d", cur, key.DesiredGeneration())
			})
			verifies(t, get(t, ns, n, &kw.ApiKeyRecord{}), get(t, ns, n+"-apikey", &corev1.Secret{}))
		}
	}
	observe()
}
