package controllers

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// The controller's own metrics, beside controller-runtime's (reconciles,
// errors, queue): what the dashboard and the alerts of docs/monitoring.md
// read.
var (
	usageCollections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_usage_collections_total",
		Help: "Usage collections from auth endpoint replicas, by result (ok, error: the replica did not answer or its answer was refused).",
	}, []string{"result"})
	usageWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyward_usage_status_writes_total",
		Help: "ApiKey status writes of usage figures (CALLS-24H, LAST USED).",
	})
	usageBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyward_usage_collected_bytes_total",
		Help: "Bytes of usage reports read from auth endpoint replicas (only the keys counted since the last report).",
	})
	usageBacklog = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keyward_usage_backlog_keys",
		Help: "ApiKeys whose shown usage figures are behind what was collected, at the last round; those beyond the write budget wait for the next round.",
	})
	keysDesc = prometheus.NewDesc("keyward_apikeys",
		"ApiKeys by state (Pending, Active, Archived, Expired, Failed), from the controller's cache.", []string{"state"}, nil)
	expiryDesc = prometheus.NewDesc("keyward_apikey_expiry_timestamp_seconds",
		"When an Active ApiKey with spec.expiresAt stops working (Unix time); only keys that expire have a series.",
		[]string{"namespace", "name"}, nil)
	// keyReader is the cache of the running controller (tests run several
	// in one process; the collector is registered once).
	keyReader atomic.Pointer[client.Reader]
)

func init() {
	ctrlmetrics.Registry.MustRegister(usageCollections, usageWrites, usageBytes, usageBacklog, keysCollector{})
	for _, r := range []string{"ok", "error"} {
		usageCollections.WithLabelValues(r)
	}
}

// ExportKeyMetrics makes keyward_apikeys and the expiry series read from r.
func ExportKeyMetrics(r client.Reader) { keyReader.Store(&r) }

type keysCollector struct{}

func (keysCollector) Describe(ch chan<- *prometheus.Desc) { ch <- keysDesc; ch <- expiryDesc }

func (keysCollector) Collect(ch chan<- prometheus.Metric) {
	r := keyReader.Load()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Read-only: no copy of every ApiKey in the cache on each scrape.
	var keys kw.ApiKeyList
	if err := (*r).List(ctx, &keys, client.UnsafeDisableDeepCopy); err != nil {
		ch <- prometheus.NewInvalidMetric(keysDesc, err)
		return
	}
	states := map[kw.KeyState]float64{kw.StatePending: 0, kw.StateActive: 0, kw.StateArchived: 0, kw.StateExpired: 0, kw.StateFailed: 0}
	for i := range keys.Items {
		k := &keys.Items[i]
		state := k.Status.State
		if state == "" {
			state = kw.StatePending
		}
		states[state]++
		if state == kw.StateActive && k.Spec.ExpiresAt != nil {
			ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue,
				float64(k.Spec.ExpiresAt.Unix()), k.Namespace, k.Name)
		}
	}
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, n, string(s))
	}
}
