package controllers

import (
	"bytes"
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// raise asks for a rotation as a user would, with a merge patch.
func raise(t testing.TB, ns, name string, gen int64, grace string) {
	t.Helper()
	key := get(t, ns, name, &kw.ApiKey{})
	patch := client.MergeFrom(key.DeepCopy())
	key.Spec.Rotation = &kw.Rotation{Generation: gen}
	if grace != "" {
		d, _ := time.ParseDuration(grace)
		key.Spec.Rotation.GracePeriod = &metav1.Duration{Duration: d}
	}
	if err := k8s.Patch(context.Background(), key, patch); err != nil {
		t.Fatal(err)
	}
}

// waitKeyID waits until status names a key other than old, and returns the
// ApiKey.
func waitKeyID(t testing.TB, ns, name, old string) *kw.ApiKey {
	t.Helper()
	var key *kw.ApiKey
	eventually(t, 10*time.Second, "a new key in status", func() (bool, string) {
		key = get(t, ns, name, &kw.ApiKey{})
		return key.Status.KeyID != "" && key.Status.KeyID != old, key.Status.KeyID
	})
	return key
}

func TestRotationKeepsThePreviousKeyForTheGracePeriod(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	create(t, newKey(ns, "rotating"))
	first := waitReason(t, ns, "rotating", kw.ReasonIssued)
	before := get(t, ns, "rotating-apikey", &corev1.Secret{})

	raise(t, ns, "rotating", 1, "2s")
	key := waitKeyID(t, ns, "rotating", first.Status.KeyID)
	sec := get(t, ns, "rotating-apikey", &corev1.Secret{})
	rec := get(t, ns, "rotating", &kw.ApiKeyRecord{})
	if sec.UID != before.UID || bytes.Equal(sec.Data[kw.SecretKeyToken], before.Data[kw.SecretKeyToken]) {
		t.Fatal("the rotation did not replace the Secret's content in place")
	}
	if sec.Annotations[kw.AnnotationKeyID] != key.Status.KeyID || sec.Annotations[kw.AnnotationGeneration] != "1" {
		t.Fatalf("Secret annotations %v, status key %s", sec.Annotations, key.Status.KeyID)
	}
	verifies(t, rec, sec)
	if len(rec.Spec.Keys) != 2 || rec.Spec.Keys[1].KeyID != first.Status.KeyID || rec.Spec.Keys[1].RevokesAt == nil ||
		rec.Spec.Keys[0].Generation != 1 {
		t.Fatalf("record keys %+v: want the new key (generation 1) and the old one with a revocation time", rec.Spec.Keys)
	}
	if len(key.Status.PreviousKeys) != 1 || key.Status.PreviousKeys[0].KeyID != first.Status.KeyID {
		t.Fatalf("status.previousKeys %+v", key.Status.PreviousKeys)
	}
	// The grace period ends: the controller drops the old key at that time
	// (requeue, not polling) and status forgets it.
	eventually(t, 10*time.Second, "the old key dropped after its grace period", func() (bool, string) {
		rec = get(t, ns, "rotating", &kw.ApiKeyRecord{})
		key = get(t, ns, "rotating", &kw.ApiKey{})
		return len(rec.Spec.Keys) == 1 && len(key.Status.PreviousKeys) == 0, ""
	})
	if rec.Current().KeyID != key.Status.KeyID {
		t.Fatal("the wrong key was dropped")
	}
	var rotated int
	for _, e := range listEvents(t, ns) {
		if e.Reason == kw.ReasonRotated && e.Action == "Rotate" {
			rotated++
		}
	}
	if rotated != 1 {
		t.Fatalf("%d Rotate events, want 1", rotated)
	}
}

// TestCrashDuringRotationIssuesOneKey kills the controller right after each
// write of a rotation; the next controller finishes the rotation with the
// key already written, never a second new one, and keeps the old key.
func TestCrashDuringRotationIssuesOneKey(t *testing.T) {
	t.Parallel()
	for _, point := range []string{PointRotationSecretWritten, PointRotationRecordWritten} {
		t.Run(point, func(t *testing.T) {
			ns := namespace(t)
			m, waitCrash := startCrashingManager(t, ns, point)
			create(t, newKey(ns, "fragile"))
			first := waitReason(t, ns, "fragile", kw.ReasonIssued)
			raise(t, ns, "fragile", 1, "1h")
			waitCrash()
			m.stop()
			written := get(t, ns, "fragile-apikey", &corev1.Secret{})
			if written.Annotations[kw.AnnotationKeyID] == first.Status.KeyID {
				t.Fatal("the crash came before the Secret was written")
			}

			// Restart three times: each finds the rotation done or in flight.
			for range 3 {
				m = startManager(t, ns)
				key := waitKeyID(t, ns, "fragile", first.Status.KeyID)
				holdStill(t, 500*time.Millisecond)
				m.stop()
				sec := get(t, ns, "fragile-apikey", &corev1.Secret{})
				rec := get(t, ns, "fragile", &kw.ApiKeyRecord{})
				if !bytes.Equal(sec.Data[kw.SecretKeyToken], written.Data[kw.SecretKeyToken]) || sec.UID != written.UID {
					t.Fatal("a second new key was issued after the crash")
				}
				if key.Status.KeyID != written.Annotations[kw.AnnotationKeyID] {
					t.Fatalf("status names %s, the Secret holds %s", key.Status.KeyID, written.Annotations[kw.AnnotationKeyID])
				}
				verifies(t, rec, sec)
				if len(rec.Spec.Keys) != 2 || rec.Spec.Keys[1].KeyID != first.Status.KeyID {
					t.Fatalf("record keys %+v: want exactly the new key and the old one", rec.Spec.Keys)
				}
			}
		})
	}
}

func TestScheduledRotation(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	startManager(t, ns)
	key := newKey(ns, "scheduled")
	key.Spec.Rotation = &kw.Rotation{Every: &metav1.Duration{Duration: time.Minute}, GracePeriod: &metav1.Duration{}}
	create(t, key)
	first := waitReason(t, ns, "scheduled", kw.ReasonIssued)
	// A minute after the key was issued the controller raises the
	// generation itself (it requeued for that moment) and rotates.
	var got *kw.ApiKey
	eventually(t, 75*time.Second, "the scheduled rotation", func() (bool, string) {
		got = get(t, ns, "scheduled", &kw.ApiKey{})
		return got.Status.KeyID != first.Status.KeyID && got.Spec.Rotation.Generation == 1, got.Status.KeyID
	})
	var scheduled bool
	for _, e := range listEvents(t, ns) {
		scheduled = scheduled || e.Action == "ScheduleRotation"
	}
	if !scheduled {
		t.Fatal("no ScheduleRotation event")
	}
	if rec := get(t, ns, "scheduled", &kw.ApiKeyRecord{}); len(rec.Spec.Keys) != 1 {
		t.Fatalf("grace period 0: the old key should be gone at once, record %+v", rec.Spec.Keys)
	}
}

// TestStatusLostDuringGracePeriod wipes status in the middle of a grace
// period (a restore): the rotation is not redone, the old key is kept, and
// status is rebuilt from the record.
func TestStatusLostDuringGracePeriod(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	m := startManager(t, ns)
	create(t, newKey(ns, "graceful"))
	first := waitReason(t, ns, "graceful", kw.ReasonIssued)
	raise(t, ns, "graceful", 1, "1h")
	key := waitKeyID(t, ns, "graceful", first.Status.KeyID)
	eventually(t, 5*time.Second, "previousKeys in status", func() (bool, string) {
		key = get(t, ns, "graceful", &kw.ApiKey{})
		return len(key.Status.PreviousKeys) == 1, ""
	})
	sec := get(t, ns, "graceful-apikey", &corev1.Secret{})
	rec := get(t, ns, "graceful", &kw.ApiKeyRecord{})

	m.stop()
	wiped := key.DeepCopy()
	wiped.Status = kw.ApiKeyStatus{}
	if err := k8s.Status().Update(context.Background(), wiped); err != nil {
		t.Fatal(err)
	}
	startManager(t, ns)
	got := waitReason(t, ns, "graceful", kw.ReasonIssued)
	eventually(t, 5*time.Second, "status rebuilt with the previous key", func() (bool, string) {
		got = get(t, ns, "graceful", &kw.ApiKey{})
		return got.Status.KeyID == key.Status.KeyID && len(got.Status.PreviousKeys) == 1 &&
			got.Status.PreviousKeys[0].KeyID == first.Status.KeyID, got.Status.KeyID
	})
	for _, o := range []client.Object{sec, rec} {
		was := o.GetResourceVersion()
		get(t, ns, o.GetName(), o)
		if o.GetResourceVersion() != was {
			t.Errorf("%T %s was written after status was lost", o, o.GetName())
		}
	}
}
