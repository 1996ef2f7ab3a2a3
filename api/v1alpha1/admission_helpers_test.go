package v1alpha1_test

import (
	"context"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"keyward.dev/keyward/internal/manifests"
	"keyward.dev/keyward/internal/testenv"
)

// applyAdmission applies config/admission as an install does.
func applyAdmission(t *testing.T) {
	t.Helper()
	if _, err := manifests.ApplyDir(context.Background(), cfg, testenv.Root()+"/config/admission"); err != nil {
		t.Fatal(err)
	}
}

// refusedWithin returns try's first error, trying for up to 20 s: an
// admission policy, or its binding, takes effect asynchronously. nil means
// try was never refused.
func refusedWithin(try func() error) error {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := try(); err != nil {
			return err
		}
	}
	return nil
}

// writtenBefore writes as if before the admission policy of binding
// existed: it deletes the binding, writes until the write passes, and
// applies config/admission again. The policy is back asynchronously: the
// caller waits for its first refusal (refusedWithin).
func writtenBefore(t *testing.T, binding string, write func() error) {
	t.Helper()
	if err := c.Delete(context.Background(), &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: binding}}); err != nil {
		t.Fatal(err)
	}
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = write(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("without the binding %s: %v", binding, err)
	}
	applyAdmission(t)
}
