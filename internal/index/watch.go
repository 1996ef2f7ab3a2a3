package index

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// The auth endpoint reads ApiKeys and their records, and nothing else: it
// has no access to Secrets, so the data plane never sees a key's plaintext.
// +kubebuilder:rbac:groups=keyward.dev,resources=apikeys;apikeyrecords,verbs=get;list;watch

// Watch feeds the index from the API server until ctx is done. It returns
// once both watches have delivered their initial lists, or with an error.
// The informers keep retrying if the API server goes away; the index keeps
// serving what it has.
func Watch(ctx context.Context, cfg *rest.Config, ix *Index, namespaces ...string) error {
	s := runtime.NewScheme()
	if err := kw.AddToScheme(s); err != nil {
		return err
	}
	opts := cache.Options{
		Scheme: s,
		ByObject: map[client.Object]cache.ByObject{
			&kw.ApiKey{}:       {Transform: slimApiKey},
			&kw.ApiKeyRecord{}: {Transform: slimRecord},
		},
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	c, err := cache.New(cfg, opts)
	if err != nil {
		return fmt.Errorf("watch keys: %w", err)
	}
	for obj, h := range map[client.Object]toolscache.ResourceEventHandlerFuncs{
		&kw.ApiKey{}: {
			AddFunc:    func(o any) { onApiKey(ix, o) },
			UpdateFunc: func(_, o any) { onApiKey(ix, o) },
			DeleteFunc: func(o any) { ix.SetApiKey(nameOf(o), nil) },
		},
		&kw.ApiKeyRecord{}: {
			AddFunc:    func(o any) { onRecord(ix, o) },
			UpdateFunc: func(_, o any) { onRecord(ix, o) },
			DeleteFunc: func(o any) { ix.SetRecord(nameOf(o), nil) },
		},
	} {
		inf, err := c.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("watch %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return fmt.Errorf("watch keys: initial list did not complete: %w", context.Cause(ctx))
	}
	ix.MarkSynced()
	return nil
}

func nameOf(o any) types.NamespacedName {
	if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	if m, ok := o.(metav1.Object); ok {
		return types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}
	}
	return types.NamespacedName{}
}

func onApiKey(ix *Index, o any) {
	k, ok := o.(*kw.ApiKey)
	if !ok {
		return
	}
	nn := types.NamespacedName{Namespace: k.Namespace, Name: k.Name}
	if k.DeletionTimestamp != nil {
		ix.SetApiKey(nn, nil) // deleting revokes now, not when the finalizer is done
		return
	}
	a := &ApiKey{Archived: k.Spec.Archived, Scopes: make([]string, len(k.Spec.Scopes))}
	for i, s := range k.Spec.Scopes {
		a.Scopes[i] = string(s)
	}
	if k.Spec.ExpiresAt != nil {
		a.ExpiresAt = k.Spec.ExpiresAt.Time
	}
	ix.SetApiKey(nn, a)
}

func onRecord(ix *Index, o any) {
	r, ok := o.(*kw.ApiKeyRecord)
	if !ok {
		return
	}
	rec := &Record{Revoked: r.Spec.Revoked, Keys: make([]Key, 0, len(r.Spec.Keys))}
	for _, k := range r.Spec.Keys {
		var revokesAt time.Time
		if k.RevokesAt != nil {
			revokesAt = k.RevokesAt.Time
		}
		rec.Keys = append(rec.Keys, Key{ID: k.KeyID, Digest: k.Digest, RevokesAt: revokesAt})
	}
	ix.SetRecord(types.NamespacedName{Namespace: r.Namespace, Name: r.Name}, rec)
}

// slimApiKey keeps only what the index reads, so 100,000 cached ApiKeys
// stay small.
func slimApiKey(o any) (any, error) {
	k, ok := o.(*kw.ApiKey)
	if !ok {
		return o, nil
	}
	return &kw.ApiKey{ObjectMeta: slimMeta(k.ObjectMeta), Spec: kw.ApiKeySpec{
		Scopes: k.Spec.Scopes, Archived: k.Spec.Archived, ExpiresAt: k.Spec.ExpiresAt,
	}}, nil
}

func slimRecord(o any) (any, error) {
	r, ok := o.(*kw.ApiKeyRecord)
	if !ok {
		return o, nil
	}
	return &kw.ApiKeyRecord{ObjectMeta: slimMeta(r.ObjectMeta), Spec: r.Spec}, nil
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID,
		ResourceVersion: m.ResourceVersion, DeletionTimestamp: m.DeletionTimestamp,
	}
}
