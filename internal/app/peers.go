package app

import (
	"context"
	"fmt"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"

	"keyward.dev/keyward/internal/index"
)

// splitService parses namespace/name.
func splitService(flag, v string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(v, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%s %q: want namespace/name of the auth endpoint's Service", flag, v)
	}
	return ns, name, nil
}

// readyEndpoints counts the ready endpoints of a Service's slices, each
// pod once (a dual-stack Service has a slice per address family).
func readyEndpoints(objs []any) int {
	seen := map[string]bool{}
	for _, o := range objs {
		s, ok := o.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			id := strings.Join(e.Addresses, ",")
			if e.TargetRef != nil && e.TargetRef.UID != "" {
				id = string(e.TargetRef.UID)
			}
			seen[id] = true
		}
	}
	return len(seen)
}

// watchPeers keeps ix's number of peers at the count of ready endpoints of
// the Service namespace/name until ctx is done. Until the slices are
// listed, and while none is ready (this replica is not, before its keys
// are loaded), it is 1: each replica enforces whole limits, never none.
func watchPeers(ctx context.Context, cfg *rest.Config, ix *index.Index, namespace, name string) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=" + name
		}))
	inf := f.Discovery().V1().EndpointSlices().Informer()
	update := func(any) { ix.SetPeers(readyEndpoints(inf.GetStore().List())) }
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, o any) { update(o) },
		DeleteFunc: update,
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}
