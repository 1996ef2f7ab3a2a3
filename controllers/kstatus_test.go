package controllers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lua "github.com/yuin/gopher-lua"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/testenv"
)

// argoHealth runs docs/argocd/apikey-health.lua, as Argo CD does, on key
// and returns the health status and message it gives.
func argoHealth(t *testing.T, key *kw.ApiKey) (string, string) {
	t.Helper()
	script, err := os.ReadFile(filepath.Join(testenv.Root(), "docs", "argocd", "apikey-health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(key)
	if err != nil {
		t.Fatal(err)
	}
	// Through JSON, as Argo CD hands the object over: numbers are numbers.
	b, _ := json.Marshal(m)
	var obj any
	_ = json.Unmarshal(b, &obj)
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(script)); err != nil {
		t.Fatalf("apikey-health.lua: %v", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("apikey-health.lua returned %v", L.Get(-1))
	}
	return ret.RawGetString("status").String(), ret.RawGetString("message").String()
}

func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	}
	return lua.LNil
}

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
	if h, _ := argoHealth(t, gone); h != "Progressing" {
		t.Errorf("Argo CD, a changed spec not yet reconciled: %s", h)
	}
	for name, want := range map[string]struct {
		reason string
		status status.Status
		argo   string
	}{
		"ok":       {kw.ReasonIssued, status.CurrentStatus, "Healthy"},
		"gone":     {kw.ReasonArchived, status.CurrentStatus, "Healthy"},
		"conflict": {kw.ReasonSecretConflict, status.FailedStatus, "Degraded"},
		"lost":     {kw.ReasonSecretMissing, status.FailedStatus, "Degraded"},
	} {
		key := waitReason(t, ns, name, want.reason)
		if h, msg := argoHealth(t, key); h != want.argo || !strings.Contains(msg, want.reason) {
			t.Errorf("%s: Argo CD health %s (%s), want %s", name, h, msg, want.argo)
		}
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
	if h, _ := argoHealth(t, &pending); h != "Progressing" {
		t.Errorf("Argo CD, issuing: %s", h)
	}
	// Leaving a stall removes Stalled: issued again, Current.
	setConditions(&pending.Status.Conditions, metav1.ConditionFalse, kw.ReasonSecretMissing, "gone", pending.Generation)
	setConditions(&pending.Status.Conditions, metav1.ConditionTrue, kw.ReasonIssued, "issued", pending.Generation)
	if r := kstatusOf(t, &pending); r.Status != status.CurrentStatus || len(pending.Status.Conditions) != 1 {
		t.Errorf("after a stall: kstatus %s, conditions %v", r.Status, pending.Status.Conditions)
	}
}
