package serve

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkForwardAuthAllow is the hot path of a check that passes, against
// BenchmarkEmptyHandler, the same request to a handler that does nothing;
// counting=off is the same path without per-key usage counting, to show
// what counting costs.
func BenchmarkForwardAuthAllow(b *testing.B) {
	for _, counting := range []bool{true, false} {
		name := map[bool]string{true: "counting=on", false: "counting=off"}[counting]
		b.Run(name, func(b *testing.B) { benchmarkAllow(b, counting) })
	}
}

func benchmarkAllow(b *testing.B, counting bool) {
	s, reader, _ := newServer(b)
	s.Metrics = NewMetrics(prometheus.NewRegistry())
	s.Decider.NoUsage = !counting
	h := s.Handler()
	r := httptest.NewRequest("GET", "/authn?scope=occupancy:read", nil)
	r.Header.Set("X-Api-Key", reader.Token())
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
	// An allow writes no status (net/http answers 200 itself) and names the key.
	if w.code != 0 || len(w.h[HeaderKeyID]) != 1 {
		b.Fatalf("not allowed: code %d, headers %v", w.code, w.h)
	}
}

func BenchmarkEmptyHandler(b *testing.B) {
	mux := http.NewServeMux()
	mux.HandleFunc("/authn", func(http.ResponseWriter, *http.Request) {})
	r := httptest.NewRequest("GET", "/authn?scope=occupancy:read", nil)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		mux.ServeHTTP(w, r)
	}
}

type discard struct {
	h    http.Header
	code int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(code int)        { d.code = code }
