package controllers

import (
	"context"
	"errors"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/policy"
)

// NewScheme knows the built-in kinds and keyward's.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := kw.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// CacheOptions are the controller's cache settings: it sees only the Secrets
// keyward labelled, so its memory does not grow with the cluster's other
// Secrets, and managed fields and kubectl's last-applied configuration are
// dropped from everything it caches (stripForCache). It holds those
// Secrets' metadata only (SetupWithManager watches them with
// builder.OnlyMetadata; NewClient refuses a whole Secret from the cache).
func CacheOptions() cache.Options {
	return cache.Options{
		DefaultTransform: stripForCache,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: labels.SelectorFromSet(labels.Set{kw.LabelManagedBy: kw.ManagedByValue})},
		},
	}
}

// stripManagedFields is controller-runtime's transform that drops managed
// fields.
var stripManagedFields = cache.TransformStripManagedFields()

// stripForCache drops from an object about to be cached what the
// controller never reads: its managed fields, and the copy of the whole
// manifest that kubectl apply (and GitOps tools applying client-side)
// keep in the kubectl.kubernetes.io/last-applied-configuration
// annotation, a few hundred bytes an ApiKey. Dropping them from the cache
// loses nothing on the API server: the controller never Updates an object,
// it merge-patches the fields it changes, computed between two copies
// that both lack them.
func stripForCache(in any) (any, error) {
	out, err := stripManagedFields(in)
	if err != nil {
		return out, err
	}
	if m, ok := out.(*metav1.PartialObjectMetadata); ok {
		// Only Secrets are cached as metadata, and the label selector is
		// no proof they are keyward's: anyone who may create a Secret can
		// label one app.kubernetes.io/managed-by=keyward and give it 256
		// KiB of annotations. Keep only what the controller reads.
		m.Labels, m.Annotations = keywardOnly(m.Labels), keywardOnly(m.Annotations)
		return m, nil
	}
	if n, ok := out.(*corev1.Namespace); ok {
		// The controller reads a namespace's labels that policies select
		// on, and whoever may create namespaces may give each any number
		// of other labels and 256 KiB of annotations.
		n.Labels, n.Annotations = policy.GuardedLabels(n.Labels), nil
		return n, nil
	}
	if o, ok := out.(metav1.Object); ok {
		if a := o.GetAnnotations(); a != nil {
			if _, ok := a[corev1.LastAppliedConfigAnnotation]; ok {
				delete(a, corev1.LastAppliedConfigAnnotation)
				if len(a) == 0 {
					o.SetAnnotations(nil)
				}
			}
		}
	}
	return out, nil
}

// keywardOnly is the entries of m that keyward writes: keyward.dev/ keys
// and the managed-by label; nil when there are none.
func keywardOnly(m map[string]string) map[string]string {
	return policy.Keep(m, func(k string) bool { return policy.Guarded(k) || k == kw.LabelManagedBy })
}

// NewClient is the controller's client: client.New, except that its cache
// refuses to read a whole Secret. keyward caches its Secrets as metadata
// only: a read of a whole Secret through the cache would start a second
// informer, holding every key's plaintext in the controller's memory for
// the life of the process (and ~1 KB a key). A Secret's content is read
// from the API server, with APIReader, when a reconcile needs it.
func NewClient(config *rest.Config, options client.Options) (client.Client, error) {
	if options.Cache != nil && options.Cache.Reader != nil {
		c := *options.Cache
		c.Reader = metadataOnlySecrets{c.Reader}
		options.Cache = &c
	}
	return client.New(config, options)
}

// errWholeSecret is a bug in keyward: a whole Secret read from the cache.
var errWholeSecret = errors.New("keyward caches Secrets as metadata only: read a Secret's content with APIReader")

type metadataOnlySecrets struct{ client.Reader }

func (c metadataOnlySecrets) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, whole := obj.(*corev1.Secret); whole {
		return errWholeSecret
	}
	return c.Reader.Get(ctx, key, obj, opts...)
}

func (c metadataOnlySecrets) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if _, whole := list.(*corev1.SecretList); whole {
		return errWholeSecret
	}
	return c.Reader.List(ctx, list, opts...)
}

// secretMetadata is an empty Secret's metadata, to read from the cache.
func secretMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}
