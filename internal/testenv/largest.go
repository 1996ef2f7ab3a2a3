package testenv

import (
	"encoding/json"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// The largest ApiKey a tenant can write: every bound config/admission/size.yaml
// leaves reached at once, the longest name, the largest spec the CRD
// takes. test/tenancy writes it and measures it against
// index.MaxApiKeyBytes; internal/index lists a page of them and measures
// the heap. One definition, so that both follow when a bound changes.

// LargestApiKey is that ApiKey in namespace, named name padded to 63
// characters, with every bound reached but its owner references (the
// caller adds real ones, or none) and keyward's finalizer (the controller
// adds it; it is the eighth).
func LargestApiKey(namespace, name string) *kw.ApiKey {
	k := &kw.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: Pad(name, 63, 63),
		Labels:      Labels(32, 65, 63),       // 4,096 bytes
		Annotations: Annotations(32, 63, 705), // 2,016 bytes of keys, 24,576 in all
		Finalizers:  Finalizers(7)}}           // keyward adds its own
	k.Spec.DisplayName = strings.Repeat("€", 128) // 3 bytes a character
	k.Spec.Description = strings.Repeat("€", 1024)
	for i := range 64 {
		k.Spec.Scopes = append(k.Spec.Scopes, kw.Scope(fmt.Sprintf("%03d:%s", i, strings.Repeat("s", 124))))
	}
	return k
}

// LargestAppliers are the three server-side-apply field managers the
// largest ApiKey has, with long names.
func LargestAppliers() []string {
	var m []string
	for i := 1; i <= 3; i++ {
		m = append(m, fmt.Sprintf("applier-%d-%s", i, strings.Repeat("m", 100)))
	}
	return m
}

// LargestApplyBody is what each of LargestAppliers applies: every label,
// annotation, finalizer and scope of k, so that each keeps its own copy
// of their names in managedFields.
func LargestApplyBody(k *kw.ApiKey) ([]byte, error) {
	return json.Marshal(map[string]any{"apiVersion": kw.GroupVersion.String(), "kind": "ApiKey",
		"metadata": map[string]any{"name": k.Name, "namespace": k.Namespace, "labels": k.Labels,
			"annotations": k.Annotations, "finalizers": k.Finalizers},
		"spec": map[string]any{"scopes": k.Spec.Scopes}})
}

// OwnerName is the i-th of the longest owner names (253 characters).
func OwnerName(i int) string { return fmt.Sprintf("o%03d.", i) + DNSName(248) }

// Labels are n labels with keys of keyLen bytes (a DNS prefix and a name)
// and values of valLen.
func Labels(n, keyLen, valLen int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[Qualified(i, keyLen)] = Pad(fmt.Sprintf("v%03d", i), valLen, 63)
	}
	return m
}

// Annotations are n annotations with keys of keyLen bytes and values of
// valLen.
func Annotations(n, keyLen, valLen int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[Qualified(i, keyLen)] = strings.Repeat("x", valLen)
	}
	return m
}

// Qualified is a label or annotation key of length l (at least 5): l-NNN,
// under a DNS prefix when longer than 63.
func Qualified(i, l int) string {
	name := fmt.Sprintf("l-%03d", i)
	if l <= 63 {
		return Pad(name, l, 63)
	}
	if l < 65 {
		return "p/" + Pad(name, l-2, 63)
	}
	return DNSName(l-64) + "/" + Pad(name, 63, 63)
}

// DNSName is a DNS subdomain of length l (at most 253): labels of up to 63
// letters joined by dots.
func DNSName(l int) string {
	var b strings.Builder
	for b.Len() < l {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strings.Repeat("p", min(63, l-b.Len())))
	}
	s := b.String()
	for strings.HasSuffix(s, ".") {
		s = s[:len(s)-1] + "q"
	}
	return s
}

// Pad pads s with 'a' to length l, at most max.
func Pad(s string, l, max int) string {
	l = min(l, max)
	if len(s) >= l {
		return s
	}
	return s + strings.Repeat("a", l-len(s))
}

// Finalizers are n finalizers of the longest form (a 253-character
// domain and a 63-character name).
func Finalizers(n int) []string {
	var f []string
	for i := range n {
		f = append(f, DNSName(253)+"/"+Pad(fmt.Sprintf("f%03d", i), 63, 63))
	}
	return f
}
