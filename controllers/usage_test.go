package controllers

import (
	"context"
	"slices"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
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
	urls, err := ServiceEndpoints(k8s, ns, "keyward-authn", "metrics")(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(urls)
	if want := []string{"http://10.0.0.1:8080", "http://[fd00::3]:8080"}; !slices.Equal(urls, want) {
		t.Fatalf("replicas %v, want %v", urls, want)
	}
}
