package index

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/policy"
)

// The auth endpoint reads ApiKeys and their records, the ApiKeyPolicies and
// the namespaces' labels (which restricted scopes a key may use), and
// nothing else: it has no access to Secrets, so the data plane never sees a
// key's plaintext, and it writes nothing.
// +kubebuilder:rbac:groups=keyward.dev,resources=apikeys;apikeyrecords;apikeypolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// Watch feeds the index from the API server until ctx is done. It returns
// once both watches have delivered their initial lists, or with an error.
// Reflectors write straight into the index, which is the only copy the
// endpoint keeps (no informer cache beside it). They keep retrying if the API
// server goes away; the index keeps serving what it has.
func Watch(ctx context.Context, cfg *rest.Config, ix *Index, namespaces ...string) error {
	s := runtime.NewScheme()
	if err := kw.AddToScheme(s); err != nil {
		return err
	}
	if err := corev1.AddToScheme(s); err != nil {
		return err
	}
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: s})
	if err != nil {
		return fmt.Errorf("watch keys: %w", err)
	}
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var pending []*indexStore
	type source struct {
		obj  client.Object
		list func() client.ObjectList
		kind kind
		ns   string
	}
	// Policies and namespaces are cluster-wide, and loaded before the index
	// says it is ready: until then a restricted scope could pass.
	sources := []source{
		{&kw.ApiKeyPolicy{}, func() client.ObjectList { return &kw.ApiKeyPolicyList{} }, policies, ""},
		{&corev1.Namespace{}, func() client.ObjectList { return &corev1.NamespaceList{} }, namespacesKind, ""},
	}
	for _, ns := range namespaces {
		sources = append(sources,
			source{&kw.ApiKey{}, func() client.ObjectList { return &kw.ApiKeyList{} }, apiKeys, ns},
			source{&kw.ApiKeyRecord{}, func() client.ObjectList { return &kw.ApiKeyRecordList{} }, records, ns})
	}
	for _, src := range sources {
		st := &indexStore{ix: ix, kind: src.kind, namespace: src.ns, synced: make(chan struct{})}
		fresh := ix.NewFreshness(time.Now())
		lw := &toolscache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				l := src.list()
				if o.Continue == "" {
					// Every list is a consistent one, at the newest
					// version, page by page. Not "0" (any version): the
					// API server's cache serves it in one piece, whatever
					// the page size. Nor the version the reflector last
					// saw, which it asks for after a watch it could not
					// resume: with a page size, the API server reads
					// exactly that version from etcd, the reflector
					// resumes from it again, and after an API server
					// restart (whose cache begins later) that loops,
					// serving the old list, until etcd compacts the
					// version five minutes on (TestWatchResumesAfterAPIServerRestart).
					o.ResourceVersion, o.ResourceVersionMatch = "", ""
				}
				// Limit and Continue by name: controller-runtime writes its
				// own (zero) ones over those of Raw, which silently turned
				// every paged list into one response.
				if err := wc.List(ctx, l, &client.ListOptions{Raw: &o, Namespace: src.ns,
					Limit: o.Limit, Continue: o.Continue}); err != nil {
					return nil, err
				}
				fresh.Heard(time.Now())
				// Each page goes into the index as it arrives and leaves the
				// list empty: the reflector's pager would otherwise hold
				// every page until the last, and a replica starting with
				// 100,000 keys would hold them all twice. What the list
				// lacks is removed when the reflector hands over the
				// (empty) whole (Replace).
				if o.Continue == "" {
					st.beginList()
				}
				if err := meta.EachListItem(l, func(o runtime.Object) error {
					st.feed(o)
					return nil
				}); err != nil {
					return nil, err
				}
				ix.pages.Add(1)
				return l, meta.SetList(l, nil)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				w, err := wc.Watch(ctx, src.list(), &client.ListOptions{Raw: &o, Namespace: src.ns})
				if err != nil {
					return nil, err
				}
				// With a streaming initial list (watch-list) the reflector
				// collects every object before handing them over: slim
				// each as it arrives.
				// Bookmarks pass untouched: the one that ends the initial
				// events says so in an annotation.
				return liveWatch(w, fresh), nil
			},
		}
		r := toolscache.NewReflectorWithOptions(pagedListWatch{lw}, src.obj, st, toolscache.ReflectorOptions{
			Name:    fmt.Sprintf("keyward index %T %s", src.obj, src.ns),
			Backoff: watchBackoff(),
		})
		// Pages (ListPageSize): a replica starting with 100,000 keys never
		// holds the whole list as one response. Namespaces come in smaller
		// pages: nothing bounds what their creators put in them.
		r.WatchListPageSize = ListPageSize
		if src.kind == namespacesKind {
			r.WatchListPageSize = min(ListPageSize, NamespacePageSize)
		}
		go r.RunWithContext(ctx)
		pending = append(pending, st)
	}
	for _, st := range pending {
		select {
		case <-st.synced:
		case <-ctx.Done():
			return fmt.Errorf("watch keys: initial list did not complete: %w", context.Cause(ctx))
		}
	}
	ix.MarkSynced()
	return nil
}

// liveWatch passes a watch's events on, slims each object as it arrives,
// and keeps fresh: open while the stream is, heard at every event and
// bookmark and when the stream ends cleanly, not when it ends in an error
// (bookmarks pass untouched: the one that ends a streaming initial list
// says so in an annotation).
func liveWatch(w watch.Interface, fresh *Freshness) watch.Interface {
	lw := &stampedWatch{in: w, out: make(chan watch.Event), done: make(chan struct{})}
	fresh.Opened(time.Now())
	go func() {
		defer close(lw.out)
		failed := false
		defer func() {
			if !failed {
				fresh.Closed(time.Now())
			}
		}()
		for e := range w.ResultChan() {
			if e.Type == watch.Error {
				// The stream ends here, and did not bring the index up
				// to date: it ages from what it last heard.
				failed = true
				fresh.Failed()
			} else {
				fresh.Heard(time.Now())
			}
			if o, ok := e.Object.(client.Object); ok && e.Type != watch.Bookmark && e.Type != watch.Error {
				slimObject(o)
			}
			select {
			case lw.out <- e:
			case <-lw.done:
				return
			}
		}
	}()
	return lw
}

// watchBackoff is how long a reflector waits between attempts while the
// API server is away: from half a second up to 4 s (6 s with jitter), not
// client-go's 30 s (60 s), so that an archival made during an outage
// applies within seconds of the API server's return. A handful of
// reflectors per replica retrying that often costs the API server nothing.
func watchBackoff() *wait.Backoff {
	return &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.5, Steps: 8, Cap: 4 * time.Second}
}

type stampedWatch struct {
	in   watch.Interface
	out  chan watch.Event
	done chan struct{}
	once sync.Once
}

func (w *stampedWatch) ResultChan() <-chan watch.Event { return w.out }

func (w *stampedWatch) Stop() {
	w.once.Do(func() { close(w.done) })
	w.in.Stop()
}

// ListPageSize is how many objects one list page holds (a variable for
// tests, which list a handful of keys in several pages).
//
// A replica holds one page of each kind at a time, and a page of ApiKeys is
// what tenants wrote. Kubernetes alone lets an object grow to etcd's
// 1.5 MiB through its metadata; config/admission/size.yaml bounds what a
// tenant can add to an ApiKey, so that the largest is MaxApiKeyBytes
// (test/tenancy writes it and measures it). A page of those, with the
// response it was decoded from, must fit the replica's 320 Mi limit beside
// its index (TestListPageBoundsATenantsMemory), or a tenant could have a
// replica killed, and it would restart into the same list. Larger pages
// would spare the API server work (its watch cache walks every object from
// a page's start to the end of the resource for each page, so paging costs
// it the square of the keys over the page size: docs/benchmarks.md).
var ListPageSize int64 = 500

// MaxApiKeyBytes is the largest ApiKey, as the API server sends it in
// JSON, that a tenant can write past the bounds of
// config/admission/size.yaml: every bound reached at once, the largest spec
// the CRD takes, three server-side-apply managers and keyward's status.
// test/tenancy fails if it can write a larger one.
const MaxApiKeyBytes = 128 << 10

// NamespacePageSize is how many namespaces one list page holds at most.
// Whoever may create namespaces (self-service namespaces) may make each as
// large as etcd takes, MaxObjectBytes, through labels and annotations: a
// page of those with its response must fit the same budget as a page of
// ApiKeys (TestListPageBoundsATenantsMemory). Of each namespace the index
// keeps only the labels a policy may select on (policy.Guarded). A cluster
// of 5,000 namespaces lists them in 125 requests when a replica starts.
const NamespacePageSize = 40

// MaxObjectBytes is the largest object the API server stores: etcd's
// default request limit (--max-request-bytes), 1.5 MiB.
const MaxObjectBytes = 3 << 19

// ListPages is how many list pages the index has been fed.
func (ix *Index) ListPages() int64 { return ix.pages.Load() }

// pagedListWatch makes the reflector list page by page rather than stream
// its initial list as watch events (watch-list): the streamed events are
// gathered in a store of the reflector's own until the last, where pages
// go straight into the index (ListWithContextFunc above).
type pagedListWatch struct{ *toolscache.ListWatch }

// IsWatchListSemanticsUnSupported tells the reflector not to use watch-list.
func (pagedListWatch) IsWatchListSemanticsUnSupported() bool { return true }

// kind is what a reflector lists.
type kind int

const (
	apiKeys kind = iota
	records
	policies
	namespacesKind
)

// indexStore is what a reflector writes into: it turns objects into index
// updates and keeps nothing of its own.
type indexStore struct {
	ix        *Index
	kind      kind
	namespace string
	synced    chan struct{}
	once      sync.Once
	// listed holds the names of what the current list has fed so far,
	// until the reflector's Replace ends it (nil: no list under way).
	listed map[types.NamespacedName]bool
}

// beginList starts a list: pages follow (feed), then Replace.
func (s *indexStore) beginList() { s.listed = map[types.NamespacedName]bool{} }

// feed takes one object of a list page into the index.
func (s *indexStore) feed(o runtime.Object) {
	if co, ok := o.(client.Object); ok {
		slimObject(co)
	}
	s.set(o)
	if s.listed != nil {
		s.listed[nameOf(o)] = true
	}
}

func (s *indexStore) Add(o any) error    { s.set(o); return nil }
func (s *indexStore) Update(o any) error { s.set(o); return nil }
func (s *indexStore) Resync() error      { return nil }

func (s *indexStore) Delete(o any) error {
	nn := nameOf(o)
	switch s.kind {
	case apiKeys:
		s.ix.SetApiKey(nn, nil)
	case records:
		s.ix.SetRecord(nn, nil)
	case policies:
		s.ix.SetPolicy(nn.Name, nil)
	case namespacesKind:
		s.ix.SetNamespace(nn.Name, nil)
	}
	return nil
}

// Replace ends a list: what it (and the pages fed before it) holds is set,
// what it lacks is gone.
func (s *indexStore) Replace(list []any, _ string) error {
	keep := s.listed
	s.listed = nil
	if keep == nil {
		keep = make(map[types.NamespacedName]bool, len(list))
	}
	for _, o := range list {
		s.set(o)
		keep[nameOf(o)] = true
	}
	names := make(map[string]bool, len(keep))
	for nn := range keep {
		names[nn.Name] = true
	}
	switch s.kind {
	case apiKeys, records:
		s.ix.Retain(s.kind == apiKeys, s.namespace, keep)
	case policies:
		s.ix.RetainPolicies(names)
	case namespacesKind:
		s.ix.RetainNamespaces(names)
	}
	s.once.Do(func() { close(s.synced) })
	return nil
}

func (s *indexStore) set(o any) {
	switch s.kind {
	case apiKeys:
		onApiKey(s.ix, o)
	case records:
		onRecord(s.ix, o)
	case policies:
		if p, ok := o.(*kw.ApiKeyPolicy); ok {
			s.ix.SetPolicy(p.Name, p)
		}
	case namespacesKind:
		if n, ok := o.(*corev1.Namespace); ok {
			labels := n.Labels // slimObject kept only the guarded ones
			if labels == nil {
				labels = map[string]string{}
			}
			s.ix.SetNamespace(n.Name, labels)
		}
	}
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
	a := &ApiKey{UID: k.UID, Archived: k.Spec.Archived, Scopes: make([]string, len(k.Spec.Scopes))}
	for i, s := range k.Spec.Scopes {
		a.Scopes[i] = string(s)
	}
	if k.Spec.ExpiresAt != nil {
		a.ExpiresAt = k.Spec.ExpiresAt.Time
	}
	a.Limits.PerSecond, a.Limits.Burst = k.Spec.Limits.Rate()
	a.Limits.PerDay = k.Spec.Limits.PerDay()
	if a.Limits.PerDay > 0 {
		a.Quota = quotaOf(k, ix.Replica())
	}
	ix.SetApiKey(nn, a)
}

// quotaOf reads what an ApiKey's status says of its quota, and of the
// calls of this replica (named replica) it holds.
func quotaOf(k *kw.ApiKey, replica string) Quota {
	var q Quota
	if u := k.Status.Usage; u != nil {
		q.Used = u.Last24h
		for _, c := range u.Cursors {
			if c.Replica == replica {
				if q.Collected == nil {
					q.Collected = map[string]int64{}
				}
				q.Collected[c.KeyID] = c.Allowed
			}
		}
	}
	if s := k.Status.Quota; s != nil && s.ExhaustedUntil != nil {
		q.ExhaustedUntil = s.ExhaustedUntil.Time
	}
	return q
}

func onRecord(ix *Index, o any) {
	r, ok := o.(*kw.ApiKeyRecord)
	if !ok {
		return
	}
	rec := &Record{UID: r.UID, Created: r.CreationTimestamp.Time, Owner: recordOwner(r),
		Revoked: r.Spec.Revoked, Keys: make([]Key, 0, len(r.Spec.Keys))}
	for _, k := range r.Spec.Keys {
		var revokesAt time.Time
		if k.RevokesAt != nil {
			revokesAt = k.RevokesAt.Time
		}
		rec.Keys = append(rec.Keys, Key{ID: k.KeyID, Digest: k.Digest, RevokesAt: revokesAt})
	}
	ix.SetRecord(types.NamespacedName{Namespace: r.Namespace, Name: r.Name}, rec)
}

// recordOwner is the UID of the ApiKey that controls a record: an ApiKey of
// the record's own name (the controller writes it so), or none.
func recordOwner(r *kw.ApiKeyRecord) types.UID {
	ref := metav1.GetControllerOfNoCopy(r)
	if ref == nil || ref.Kind != "ApiKey" || ref.Name != r.Name || ref.APIVersion != kw.GroupVersion.String() {
		return ""
	}
	return ref.UID
}

// slimObject drops managed fields, annotations, status and, but for a
// record's controller, owner references: the index reads spec, names,
// UIDs, labels and the deletion timestamp; of an ApiKey with a daily
// quota, also the quota and usage figures of its status (limits.go).
func slimObject(o client.Object) {
	o.SetManagedFields(nil)
	o.SetAnnotations(nil)
	if ref := metav1.GetControllerOfNoCopy(o); ref != nil && len(o.GetOwnerReferences()) > 1 {
		o.SetOwnerReferences([]metav1.OwnerReference{*ref})
	} else if ref == nil {
		o.SetOwnerReferences(nil)
	}
	switch o := o.(type) {
	case *kw.ApiKey:
		var keep kw.ApiKeyStatus
		if o.Spec.Limits.PerDay() > 0 {
			keep.Quota = o.Status.Quota
			if u := o.Status.Usage; u != nil {
				keep.Usage = &kw.Usage{Last24h: u.Last24h, Cursors: u.Cursors}
			}
		}
		o.Status = keep
	case *corev1.Namespace:
		// Of a namespace's labels only those a policy may select on: who
		// may create namespaces may give each 1.5 MiB of other labels.
		o.Spec, o.Status = corev1.NamespaceSpec{}, corev1.NamespaceStatus{}
		o.Labels = policy.GuardedLabels(o.Labels)
	}
}
