package serve

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkForwardAuthAllow is the hot path of a check that passes, against
// BenchmarkEmptyHandler, the same request to a handler that does nothing.
func BenchmarkForwardAuthAllow(b *testing.B) {
	s, reader, _ := newServer(b)
	s.Metrics = NewMetrics(prometheus.NewRegistry())
	h := s.Handler()
	r := httptest.NewRequest("GET", "/authn?scope=occupancy:read", nil)
	r.Header.Set("X-Api-Key", reader.Token())
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
	if w.code != 200 {
		b.Fatalf("code %d", w.code)
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
