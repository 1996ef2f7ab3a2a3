package controllers

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/event"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// TestServiceEndpoints finds the auth endpoint replicas from the
// EndpointSlices of their Service, as the API server stores them: ready
// addresses only, on the port named metrics.
func TestServiceEndpoints(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	slice := func(name string, family discoveryv1.AddressType, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
				Labels: map[string]string{discoveryv1.LabelServiceName: "keyward-authn"}},
			AddressType: family,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr.To("http"), Port: ptr.To[int32](8180)},
				{Name: ptr.To("metrics"), Port: ptr.To[int32](8080)},
			},
			Endpoints: eps,
		}
	}
	ready := func(addr string, ok bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ok)}}
	}
	other := slice("other", discoveryv1.AddressTypeIPv4, ready("10.0.9.9", true))
	other.Labels[discoveryv1.LabelServiceName] = "something-else"
	create(t,
		slice("a", discoveryv1.AddressTypeIPv4, ready("10.0.0.1", true), ready("10.0.0.2", false)),
		slice("b", discoveryv1.AddressTypeIPv6, ready("fd00::3", true)),
		other)
	r, err := ServiceEndpoints(k8s, ns, "keyward-authn", "metrics")(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	urls := r.URLs
	slices.Sort(urls)
	if want := []string{"https://10.0.0.1:8080", "https://[fd00::3]:8080"}; !slices.Equal(urls, want) {
		t.Fatalf("replicas %v, want %v", urls, want)
	}
	// The pods behind it, ready or not, name the hosts whose runs may still
	// report; the addresses above name no pod, so that is not known.
	if r.Hosts != nil {
		t.Fatalf("hosts %v of addresses without pods, want unknown (nil)", r.Hosts)
	}
	pod := func(addr, name string, ok bool) discoveryv1.Endpoint {
		e := ready(addr, ok)
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name}
		return e
	}
	long := strings.Repeat("p", 60)
	withPods := slice("c", discoveryv1.AddressTypeIPv4, pod("10.0.1.1", "authn-1", true), pod("10.0.1.2", long, false))
	withPods.Labels[discoveryv1.LabelServiceName] = "pods"
	create(t, withPods)
	r, err = ServiceEndpoints(k8s, ns, "pods", "metrics")(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"authn-1": true, long: true}; !maps.Equal(r.Hosts, want) || !slices.Equal(r.URLs, []string{"https://10.0.1.1:8080"}) {
		t.Fatalf("hosts %v and URLs %v, want hosts %v and the ready pod's URL", r.Hosts, r.URLs, want)
	}
}

// Usage writes do not wake the reconciler; every other change does.
func TestUsageOnlyUpdatesAreSkipped(t *testing.T) {
	old := newKey("ns", "k", "a:read")
	old.ResourceVersion = "1"
	for _, tc := range []struct {
		name   string
		change func(*kw.ApiKey)
		wake   bool
	}{
		{"usage", func(k *kw.ApiKey) { k.Status.Usage = &kw.Usage{Last24h: 3}; k.ResourceVersion = "2" }, false},
		{"last used", func(k *kw.ApiKey) { now := metav1.Now(); k.Status.LastUsedAt = &now; k.ResourceVersion = "2" }, false},
		{"status wiped", func(k *kw.ApiKey) { k.Status = kw.ApiKeyStatus{} }, true},
		{"spec", func(k *kw.ApiKey) { k.Spec.Archived = true }, true},
		{"deletion", func(k *kw.ApiKey) { now := metav1.Now(); k.DeletionTimestamp = &now }, true},
	} {
		old := old.DeepCopy()
		old.Status.State = kw.StateActive
		cur := old.DeepCopy()
		tc.change(cur)
		if got := notUsageOnly.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: cur}); got != tc.wake {
			t.Errorf("%s: wakes %v, want %v", tc.name, got, tc.wake)
		}
	}
}
