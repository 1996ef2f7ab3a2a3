// Package usage carries per-key call counts from the auth endpoint replicas
// to the ApiKeys' status. Each replica counts in memory and serves its
// running totals at /usage; the controller (the only writer of ApiKeys)
// collects them, folds the increase since the last collection into hourly
// buckets in the ApiKey's status, and keeps, in the same status write, a
// cursor per replica and key ID, so a retried or repeated collection never
// counts a call twice. The data plane writes nothing to the API server.
package usage

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"keyward.dev/keyward/internal/index"
)

// Path is where an endpoint replica serves its report (on its metrics
// address).
const Path = "/usage"

// Report is one replica's running totals since it started.
type Report struct {
	// Replica is unique per run of a replica: a restarted replica starts
	// again from zero under a new name.
	Replica string     `json:"replica"`
	Keys    []KeyCount `json:"keys"`
}

// KeyCount is one key ID's totals in a report.
type KeyCount struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	KeyID     string `json:"keyId"`
	Allowed   uint64 `json:"allowed"`
	Denied    uint64 `json:"denied"`
	// Limited is how many of Denied were refused for the key's limits.
	Limited  uint64    `json:"limited,omitempty"`
	LastUsed time.Time `json:"lastUsed,omitzero"`
}

// Snapshot reads the totals of every key that was checked at least once.
func Snapshot(ix *index.Index, replica string) Report {
	r := Report{Replica: replica, Keys: []KeyCount{}}
	ix.Each(func(e index.Identity, u *index.Usage) {
		allowed, denied := u.Totals()
		if allowed == 0 && denied == 0 {
			return
		}
		ns, name := e.Namespace(), e.Name()
		r.Keys = append(r.Keys, KeyCount{Namespace: ns, Name: name, KeyID: e.KeyID(),
			Allowed: allowed, Denied: denied, Limited: u.Counts()[index.Limited], LastUsed: u.LastUsed()})
	})
	return r
}

// Handler serves a replica's report as JSON.
func Handler(ix *index.Index, replica string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Snapshot(ix, replica))
	})
}

// Metrics exports the per-key counts to Prometheus as
// keyward_apikey_checks_total{namespace,name,key_id,decision}, read from
// the counters at scrape time: the hot path pays nothing for it.
type Metrics struct {
	Index *index.Index
	desc  *prometheus.Desc
}

// NewMetrics returns the per-key collector of ix.
func NewMetrics(ix *index.Index) *Metrics {
	return &Metrics{Index: ix, desc: prometheus.NewDesc("keyward_apikey_checks_total",
		"Checks of each key by this endpoint replica since it started, by decision.",
		[]string{"namespace", "name", "key_id", "decision"}, nil)}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.desc }

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	var out []prometheus.Metric
	m.Index.Each(func(e index.Identity, u *index.Usage) {
		ns, name := e.Namespace(), e.Name()
		for o, n := range u.Counts() {
			if n == 0 {
				continue
			}
			out = append(out, prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(n),
				ns, name, e.KeyID(), index.OutcomeNames[o]))
		}
	})
	// Sent after the walk: a slow scraper never holds an index lock.
	for _, x := range out {
		ch <- x
	}
}
