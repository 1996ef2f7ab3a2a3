package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/usage"
)

// Defaults of usage collection. A call reaches `kubectl get apikeys` within
// DefaultUsageInterval + DefaultUsageMinWrite (60 s); at 10,000 keys with
// traffic that is at most 10,000/55 s ≈ 182 status writes per second, and
// never more than DefaultUsageWritesPerSecond whatever the number of keys.
const (
	DefaultUsageInterval        = 5 * time.Second
	DefaultUsageMinWrite        = 55 * time.Second
	DefaultUsageWritesPerSecond = 200
)

// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=list
// +kubebuilder:rbac:urls=/usage,verbs=get

// UsageCollector collects the auth endpoint replicas' running totals every
// Interval and folds them into the ApiKeys' status (usage, lastUsedAt). It
// runs on the leader only. Each write carries the cursors with the counts
// and is made against the resourceVersion it was computed from, so a
// conflict or a retry never counts a call twice; a replica's calls since
// its last collection are lost if it dies (at most Interval of them).
type UsageCollector struct {
	Client client.Client
	// Endpoints finds the endpoint replicas: the base URLs of their
	// metrics addresses and, when known, the hosts behind them.
	Endpoints func(ctx context.Context) (Replicas, error)
	// Interval between collections; MinWrite between two usage writes of
	// one ApiKey; WritesPerSecond caps all usage writes.
	Interval, MinWrite time.Duration
	WritesPerSecond    float64
	Log                logr.Logger
	// Now is the clock (tests).
	Now func() time.Time
	// Transport carries the requests to the replicas: TLS and the
	// controller's bearer token, since /usage answers only callers who may
	// get it (default: http.DefaultTransport, for tests).
	Transport http.RoundTripper

	http      http.Client
	lastWrite map[types.NamespacedName]time.Time
	limiter   *rate.Limiter
	// pending are totals collected and not yet written, by ApiKey;
	// replicas the ack state of each replica address.
	pending  map[types.NamespacedName]pendingObs
	replicas map[string]*replicaState
}

// NeedLeaderElection: only the leader writes status.
func (u *UsageCollector) NeedLeaderElection() bool { return true }

// Start collects until ctx is done.
func (u *UsageCollector) Start(ctx context.Context) error {
	if u.Interval == 0 {
		u.Interval = DefaultUsageInterval
	}
	if u.MinWrite == 0 {
		u.MinWrite = DefaultUsageMinWrite
	}
	if u.WritesPerSecond == 0 {
		u.WritesPerSecond = DefaultUsageWritesPerSecond
	}
	if u.Now == nil {
		u.Now = time.Now
	}
	u.http.Timeout = u.Interval
	u.http.Transport = u.Transport
	u.lastWrite = map[types.NamespacedName]time.Time{}
	u.pending = map[types.NamespacedName]pendingObs{}
	u.replicas = map[string]*replicaState{}
	u.limiter = rate.NewLimiter(rate.Limit(u.WritesPerSecond), 1)
	t := time.NewTicker(u.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := u.round(ctx); err != nil && ctx.Err() == nil {
				u.Log.Error(err, "usage collection")
			}
		}
	}
}

// replicaState is what the collector knows of one replica address: the
// report it last received from it, which the next request acknowledges.
type replicaState struct {
	ack uint64
	// name of the replica run last heard at this address.
	name string
}

// pendingObs are the totals collected for one ApiKey and not yet written
// into its status: the latest of each replica and key ID (running totals:
// the latest holds all before it).
type pendingObs map[[2]string]usage.Observation

// round collects every replica once, folds what they report into the
// ApiKeys concerned, and writes, within the write budget, the keys whose
// shown figures are most out of date first.
func (u *UsageCollector) round(ctx context.Context) error {
	reps, err := u.Endpoints(ctx)
	if err != nil {
		return fmt.Errorf("find the auth endpoint replicas: %w", err)
	}
	urls := reps.URLs
	answered := map[string]bool{}
	for _, url := range urls {
		d, err := u.fetch(ctx, url)
		if err != nil {
			// Keep every cursor this round: a replica that did not answer
			// may still hold totals that were taken in.
			u.Log.V(1).Info("usage: a replica did not answer", "url", url, "error", err.Error())
			usageCollections.WithLabelValues("error").Inc()
			answered = nil
			continue
		}
		usageCollections.WithLabelValues("ok").Inc()
		if answered != nil {
			answered[d.Replica] = true
		}
		for _, c := range d.Keys {
			k, ok := c.KeyCount()
			if !ok {
				continue
			}
			nn := types.NamespacedName{Namespace: k.Namespace, Name: k.Name}
			if u.pending[nn] == nil {
				u.pending[nn] = pendingObs{}
			}
			u.pending[nn][[2]string{d.Replica, k.KeyID}] = usage.Observation{Replica: d.Replica, KeyCount: k}
		}
	}
	// Which cursors' runs are gone for good can be told only when every
	// replica answered (usage.Live).
	var live *usage.Live
	if answered != nil {
		live = usage.Answered(answered, reps.Hosts)
	}
	var keys kw.ApiKeyList
	if err := u.Client.List(ctx, &keys, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	now := u.Now()
	type candidate struct {
		key      *kw.ApiKey
		nu       *kw.Usage
		last     *metav1.Time
		quota    *kw.Quota
		score    float64
		mustSend bool
	}
	var cands []candidate
	seen := make(map[types.NamespacedName]bool, len(u.pending))
	for i := range keys.Items {
		key := &keys.Items[i]
		nn := types.NamespacedName{Namespace: key.Namespace, Name: key.Name}
		obs := u.pending[nn]
		seen[nn] = obs != nil
		perDay := key.Spec.Limits.PerDay()
		if obs == nil && perDay == 0 && key.Status.Quota == nil && !usage.Due(key.Status.Usage, live, now) {
			continue // nothing new, nothing to roll off: no fold, no copy
		}
		list := make([]usage.Observation, 0, len(obs))
		for _, o := range obs {
			list = append(list, o)
		}
		nu, last := usage.Fold(key.Status.Usage, key.Status.LastUsedAt, list, live, now)
		quota := quotaOf(key, nu, len(urls), now)
		quotaChanged := !equality.Semantic.DeepEqual(quota, key.Status.Quota)
		if !quotaChanged && !usage.Changed(key.Status.Usage, key.Status.LastUsedAt, nu, last) {
			delete(u.pending, nn) // folded into what the status shows already
			continue
		}
		// A key with a daily quota is written every round its figures
		// move: the replicas' shares of what is left come from it
		// (internal/index/limits.go).
		age := now.Sub(u.lastWrite[nn])
		if !quotaChanged && perDay == 0 && age < u.MinWrite {
			continue
		}
		cands = append(cands, candidate{key: key, nu: nu, last: last, quota: quota, mustSend: perDay > 0 || quotaChanged,
			score: score(age, usage.Share(key.Status.Usage, nu))})
	}
	// Pending totals of ApiKeys that are gone.
	for nn := range u.pending {
		if _, ok := seen[nn]; !ok {
			delete(u.pending, nn)
		}
	}
	usageBacklog.Set(float64(len(cands)))
	sort.Slice(cands, func(i, j int) bool {
		return before(priority{cands[i].mustSend, cands[i].score}, priority{cands[j].mustSend, cands[j].score})
	})
	budget := max(int(u.WritesPerSecond*u.Interval.Seconds()), 1)
	cands = cands[:min(len(cands), budget)] // the rest wait for the next round, at the front
	// The writes go out from several workers, paced by the budget's token
	// bucket: one at a time, a write's round trip (5-15 ms) held them to
	// well under the budget.
	type done struct {
		nn  types.NamespacedName
		err error
	}
	work := make(chan candidate)
	results := make(chan done, len(cands))
	var wg sync.WaitGroup
	for range min(usageWriters, len(cands)) {
		wg.Go(func() {
			for c := range work {
				if err := u.limiter.Wait(ctx); err != nil {
					results <- done{err: err}
					continue
				}
				key := c.key.DeepCopy()
				before := key.DeepCopy()
				key.Status.Usage, key.Status.LastUsedAt, key.Status.Quota = c.nu, c.last, c.quota
				err := u.Client.Status().Patch(ctx, key, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}),
					client.FieldOwner(FieldOwner))
				results <- done{nn: client.ObjectKeyFromObject(key), err: err}
			}
		})
	}
	for _, c := range cands {
		work <- c
	}
	close(work)
	wg.Wait()
	close(results)
	var first error
	for r := range results {
		switch {
		case r.err == nil:
			usageWrites.Inc()
			u.lastWrite[r.nn] = now
			delete(u.pending, r.nn)
		case ctx.Err() != nil:
			return nil
		case apierrors.IsConflict(r.err) || apierrors.IsNotFound(r.err):
			// Folded from an old status: the next round folds the
			// pending totals into the new one.
		case first == nil:
			first = fmt.Errorf("write usage of %s: %w", r.nn, r.err)
		}
	}
	return first
}

// usageWriters is how many usage writes are in flight at once.
const usageWriters = 16

// priority orders the keys waiting for a usage write: keys with a daily
// quota first (the replicas' shares of what is left come from their
// status), then by score.
type priority struct {
	must  bool
	score float64
}

func before(a, b priority) bool {
	if a.must != b.must {
		return a.must
	}
	return a.score > b.score
}

// score is how much a key's write is owed: the time since its last write,
// weighed by how far off its shown figures are (share of change, up to 3
// for a figure a quarter of the truth or less). Age alone would let a key
// whose figure doubled wait behind one that moved by a call; share alone
// would starve quiet keys. With the weight capped at 4, a key is written
// within about 5 × ⌈keys waiting / writes per round⌉ rounds
// (TestUsageWriteOrderBound measures it).
func score(age time.Duration, share float64) float64 {
	return age.Seconds() * (1 + min(share, 3))
}

// quotaOf is where key stands against its daily quota with usage nu at
// now, shared by replicas endpoint replicas; nil when it has none.
func quotaOf(key *kw.ApiKey, nu *kw.Usage, replicas int, now time.Time) *kw.Quota {
	perDay := key.Spec.Limits.PerDay()
	if perDay == 0 {
		return nil
	}
	q := &kw.Quota{RequestsPerDay: perDay, ExhaustedUntil: usage.ExhaustedUntil(nu, perDay, replicas, now)}
	if nu != nil {
		q.Used = nu.Last24h
	}
	return q
}

// fetch asks one replica for what changed since the report it last sent
// this collector (everything, the first time).
func (u *UsageCollector) fetch(ctx context.Context, base string) (*usage.Delta, error) {
	st := u.replicas[base]
	if st == nil {
		st = &replicaState{}
		u.replicas[base] = st
	}
	q := "?v=2&full=1"
	if st.ack != 0 {
		q = "?v=2&ack=" + strconv.FormatUint(st.ack, 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+usage.Path+q, nil)
	if err != nil {
		return nil, err
	}
	resp, err := u.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", base+usage.Path, resp.Status)
	}
	cr := &countingReader{r: resp.Body}
	var d usage.Delta
	if err := json.NewDecoder(cr).Decode(&d); err != nil {
		return nil, fmt.Errorf("decode %s: %w", base+usage.Path, err)
	}
	usageBytes.Add(float64(cr.n))
	if d.Replica == "" {
		return nil, fmt.Errorf("%s: report names no replica", base+usage.Path)
	}
	st.ack, st.name = d.ID, d.Replica
	return &d, nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Replicas is where the auth endpoint replicas are.
type Replicas struct {
	// URLs are the base URLs (https://host:port of the metrics address)
	// of the replicas to collect from.
	URLs []string
	// Hosts are the pods behind the endpoints' Service, ready or not (a
	// cursor of a pod not among them is dropped: that pod is gone); nil
	// when not known.
	Hosts map[string]bool
}

// StaticEndpoints is a fixed list of replica base URLs.
func StaticEndpoints(urls ...string) func(context.Context) (Replicas, error) {
	return func(context.Context) (Replicas, error) { return Replicas{URLs: urls}, nil }
}

// ServiceEndpoints finds the replicas behind a Service from its
// EndpointSlices: every ready address, on the port named port, and the
// pod of every address, ready or not.
func ServiceEndpoints(c client.Reader, namespace, service, port string) func(context.Context) (Replicas, error) {
	return func(ctx context.Context) (Replicas, error) {
		var slices discoveryv1.EndpointSliceList
		if err := c.List(ctx, &slices, client.InNamespace(namespace),
			client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
			return Replicas{}, err
		}
		r := Replicas{Hosts: map[string]bool{}}
		for _, s := range slices.Items {
			var p int32
			for _, sp := range s.Ports {
				if sp.Name != nil && *sp.Name == port && sp.Port != nil {
					p = *sp.Port
				}
			}
			for _, e := range s.Endpoints {
				switch {
				case r.Hosts == nil:
				case e.TargetRef != nil && e.TargetRef.Kind == "Pod":
					r.Hosts[e.TargetRef.Name] = true
				default:
					r.Hosts = nil // an address of no pod: which hosts are gone cannot be told
				}
				if p == 0 || e.Conditions.Ready != nil && !*e.Conditions.Ready {
					continue
				}
				for _, a := range e.Addresses {
					host := a
					if s.AddressType == discoveryv1.AddressTypeIPv6 {
						host = "[" + a + "]"
					}
					r.URLs = append(r.URLs, "https://"+host+":"+strconv.Itoa(int(p)))
				}
			}
		}
		return r, nil
	}
}
