// Package manifests applies keyward's YAML manifests (samples, admission
// policy) to a cluster, for keyward dev and the tests.
package manifests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = kw.AddToScheme(s)
	return s
}

// ApplyDir server-side applies every YAML document of dir's *.yaml files
// (but kustomization.yaml), in file name order, as `kubectl apply
// --server-side` would, and returns how many objects it applied.
func ApplyDir(ctx context.Context, cfg *rest.Config, dir string) (int, error) {
	return ApplyDirIn(ctx, cfg, dir, "")
}

// ApplyDirIn is ApplyDir with the placeholder namespace "system" of
// config/rbac and config/manager replaced by namespace, in objects and in
// the subjects of bindings, as config/default's kustomization does.
func ApplyDirIn(ctx context.Context, cfg *rest.Config, dir, namespace string) (int, error) {
	c, err := client.New(cfg, client.Options{Scheme: scheme()})
	if err != nil {
		return 0, err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return 0, err
	}
	sort.Strings(files)
	n := 0
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return n, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return n, fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if namespace != "" {
				inNamespace(u, namespace)
			}
			if err := applyWithRetry(ctx, c, u); err != nil {
				return n, fmt.Errorf("%s: %s %s: %w", f, u.GetKind(), u.GetName(), err)
			}
			n++
		}
	}
	return n, nil
}

func applyWithRetry(ctx context.Context, c client.Client, u *unstructured.Unstructured) error {
	// A CRD installed moments ago may not be served yet.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Patch(ctx, u, client.Apply, client.FieldOwner("keyward-dev"), client.ForceOwnership) //nolint:staticcheck
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		if u.GroupVersionKind().Group != kw.GroupVersion.Group {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// inNamespace moves an object, and the subjects it binds, from the
// placeholder namespace "system" to namespace.
func inNamespace(u *unstructured.Unstructured, namespace string) {
	if u.GetNamespace() == "system" {
		u.SetNamespace(namespace)
	}
	subjects, _, _ := unstructured.NestedSlice(u.Object, "subjects")
	for _, s := range subjects {
		if m, ok := s.(map[string]any); ok && m["namespace"] == "system" {
			m["namespace"] = namespace
		}
	}
	if subjects != nil {
		_ = unstructured.SetNestedSlice(u.Object, subjects, "subjects")
	}
}
