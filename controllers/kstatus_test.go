package controllers

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// kstatusOf computes what Flux, Argo CD and kubectl wait (kstatus) make of
// an ApiKey as the API server returned it.
func kstatusOf(t *testing.T, key *kw.ApiKey) *status.Result {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(key)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(kw.GroupVersion.String())
	u.SetKind("ApiKey")
	r, err := status.Compute(u)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Every state of an ApiKey reads as a user would expect under kstatus:
// issued or archived is Current, waiting for the controller is
// InProgress, and what needs someone to act is Failed with the reason.
func TestKstatusOfEveryState(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken"},
		StringData: map[string]string{"password": "not-a-key"}})
	startManager(t, ns)
	conflict := newKey(ns, "conflict")
	conflict.Spec.SecretName = "taken"
	create(t, newKey(ns, "ok"), conflict, newKey(ns, "lost"), newKey(ns, "gone"))
	waitReason(t, ns, "lost", kw.ReasonIssued)
	if err := k8s.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "lost-apikey"}}); err != nil {
		t.Fatal(err)
	}
	gone := waitReason(t, ns, "gone", kw.ReasonIssued)
	gone.Spec.Archived = true
	if err := k8s.Update(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	// The API server's answer to a spec change, before the controller has
	// seen it: observedGeneration lags.
	if r := kstatusOf(t, gone); r.Status != status.InProgressStatus {
		t.Errorf("a changed spec not yet reconciled: %s (%s)", r.Status, r.Message)
	}
	for name, want := range map[string]struct {
		reason string
		status status.Status
	}{
		"ok":       {kw.ReasonIssued, status.CurrentStatus},
		"gone":     {kw.ReasonArchived, status.CurrentStatus},
		"conflict": {kw.ReasonSecretConflict, status.FailedStatus},
		"lost":     {kw.ReasonSecretMissing, status.FailedStatus},
	} {
		key := waitReason(t, ns, name, want.reason)
		if r := kstatusOf(t, key); r.Status != want.status {
			t.Errorf("%s (%s): kstatus %s (%s), want %s", name, want.reason, r.Status, r.Message, want.status)
		} else if want.status == status.FailedStatus && r.Message == "" {
			t.Errorf("%s: Failed without a message", name)
		}
	}
	// Before the controller has issued it: InProgress, as Reconciling.
	var pending kw.ApiKey
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "ok"}, &pending); err != nil {
		t.Fatal(err)
	}
	pending.Status.Conditions = nil
	setConditions(&pending.Status.Conditions, metav1.ConditionFalse, kw.ReasonIssuing, "the key is being issued", pending.Generation)
	if r := kstatusOf(t, &pending); r.Status != status.InProgressStatus {
		t.Errorf("issuing: kstatus %s, want InProgress", r.Status)
	}
	// Leaving a stall removes Stalled: issued again, Current.
	setConditions(&pending.Status.Conditions, metav1.ConditionFalse, kw.ReasonSecretMissing, "gone", pending.Generation)
	setConditions(&pending.Status.Conditions, metav1.ConditionTrue, kw.ReasonIssued, "issued", pending.Generation)
	if r := kstatusOf(t, &pending); r.Status != status.CurrentStatus || len(pending.Status.Conditions) != 1 {
		t.Errorf("after a stall: kstatus %s, conditions %v", r.Status, pending.Status.Conditions)
	}
}
