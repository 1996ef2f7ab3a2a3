package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	// Endpoints returns the base URLs (http://host:port of the metrics
	// address) of every endpoint replica.
	Endpoints func(ctx context.Context) ([]string, error)
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

// round collects every replica once and writes what changed.
func (u *UsageCollector) round(ctx context.Context) error {
	urls, err := u.Endpoints(ctx)
	if err != nil {
		return fmt.Errorf("find the auth endpoint replicas: %w", err)
	}
	live := map[string]bool{}
	obs := map[types.NamespacedName][]usage.Observation{}
	for _, url := range urls {
		r, err := u.fetch(ctx, url)
		if err != nil {
			// Keep every cursor this round: a replica that did not answer
			// may still hold totals that were taken in.
			u.Log.V(1).Info("usage: a replica did not answer", "url", url, "error", err.Error())
			usageCollections.WithLabelValues("error").Inc()
			live = nil
			continue
		}
		usageCollections.WithLabelValues("ok").Inc()
		if live != nil {
			live[r.Replica] = true
		}
		for _, k := range r.Keys {
			nn := types.NamespacedName{Namespace: k.Namespace, Name: k.Name}
			obs[nn] = append(obs[nn], usage.Observation{Replica: r.Replica, KeyCount: k})
		}
	}
	var keys kw.ApiKeyList
	if err := u.Client.List(ctx, &keys); err != nil {
		return err
	}
	now := u.Now()
	for i := range keys.Items {
		key := &keys.Items[i]
		nn := types.NamespacedName{Namespace: key.Namespace, Name: key.Name}
		nu, last := usage.Fold(key.Status.Usage, key.Status.LastUsedAt, obs[nn], live, now)
		quota := quotaOf(key, nu, len(urls), now)
		quotaChanged := !equality.Semantic.DeepEqual(quota, key.Status.Quota)
		// A key with a daily quota is written every round its figures
		// move: the replicas' shares of what is left are refreshed from
		// it (internal/index/limits.go).
		minWrite := u.MinWrite
		if quota != nil {
			minWrite = 0
		}
		if !quotaChanged && (!usage.Changed(key.Status.Usage, key.Status.LastUsedAt, nu, last) ||
			now.Sub(u.lastWrite[nn]) < minWrite) {
			continue
		}
		if err := u.limiter.Wait(ctx); err != nil {
			return nil
		}
		before := key.DeepCopy()
		key.Status.Usage, key.Status.LastUsedAt, key.Status.Quota = nu, last, quota
		err := u.Client.Status().Patch(ctx, key, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}),
			client.FieldOwner(FieldOwner))
		switch {
		case err == nil:
			usageWrites.Inc()
			u.lastWrite[nn] = now
		case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
			// Folded from an old status: the next round folds the new one.
		default:
			return fmt.Errorf("write usage of %s: %w", nn, err)
		}
	}
	return nil
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

func (u *UsageCollector) fetch(ctx context.Context, base string) (*usage.Report, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+usage.Path, nil)
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
	var r usage.Report
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", base+usage.Path, err)
	}
	if r.Replica == "" {
		return nil, fmt.Errorf("%s: report names no replica", base+usage.Path)
	}
	return &r, nil
}

// StaticEndpoints is a fixed list of replica base URLs.
func StaticEndpoints(urls ...string) func(context.Context) ([]string, error) {
	return func(context.Context) ([]string, error) { return urls, nil }
}

// ServiceEndpoints finds the replicas behind a Service from its
// EndpointSlices: every ready address, on the port named port.
func ServiceEndpoints(c client.Reader, namespace, service, port string) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		var slices discoveryv1.EndpointSliceList
		if err := c.List(ctx, &slices, client.InNamespace(namespace),
			client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
			return nil, err
		}
		var urls []string
		for _, s := range slices.Items {
			var p int32
			for _, sp := range s.Ports {
				if sp.Name != nil && *sp.Name == port && sp.Port != nil {
					p = *sp.Port
				}
			}
			if p == 0 {
				continue
			}
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && !*e.Conditions.Ready {
					continue
				}
				for _, a := range e.Addresses {
					host := a
					if s.AddressType == discoveryv1.AddressTypeIPv6 {
						host = "[" + a + "]"
					}
					urls = append(urls, "https://"+host+":"+strconv.Itoa(int(p)))
				}
			}
		}
		return urls, nil
	}
}
