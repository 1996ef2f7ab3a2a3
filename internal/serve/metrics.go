package serve

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"keyward.dev/keyward/internal/authn"
)

// Metrics count decisions by reason and time them. The counters of every
// reason are resolved once, so counting costs no label lookup.
type Metrics struct {
	byReason map[string]prometheus.Counter
	other    prometheus.Counter
	latency  prometheus.Histogram
	panics   prometheus.Counter
}

// NewMetrics registers keyward's decision metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyward_authn_decisions_total",
		Help: "Decisions of the auth endpoint, by reason (allowed, missing_key, invalid_key, …).",
	}, []string{"reason"})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keyward_authn_decision_duration_seconds",
		Help:    "Time from receiving a check to having answered it.",
		Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2},
	})
	panics := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyward_authn_panics_total",
		Help: "Checks whose handler panicked (a bug): each was answered 500 internal_error and the process served on.",
	})
	reg.MustRegister(decisions, latency, panics)
	m := &Metrics{byReason: map[string]prometheus.Counter{}, latency: latency, panics: panics,
		other: decisions.WithLabelValues("other")}
	for _, r := range []string{authn.ReasonAllowed, authn.ReasonMissingKey, authn.ReasonMalformedKey,
		authn.ReasonInvalidKey, authn.ReasonArchived, authn.ReasonExpired, authn.ReasonInsufficientScope,
		authn.ReasonAmbiguousCredentials, authn.ReasonNotReady, authn.ReasonMalformedRequest,
		authn.ReasonTooManyScopes, authn.ReasonInternalError, authn.ReasonStale, authn.ReasonRateLimited,
		authn.ReasonQuotaExceeded} {
		m.byReason[r] = decisions.WithLabelValues(r)
	}
	return m
}

// Observe counts one decision.
func (m *Metrics) Observe(v authn.Verdict, start time.Time) {
	if m == nil {
		return
	}
	c, ok := m.byReason[v.Reason]
	if !ok {
		c = m.other
	}
	c.Inc()
	m.latency.Observe(time.Since(start).Seconds())
}

// Panicked counts a check whose handler panicked.
func (m *Metrics) Panicked() {
	if m != nil {
		m.panics.Inc()
	}
}
