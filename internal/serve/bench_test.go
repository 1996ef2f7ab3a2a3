package serve

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// BenchmarkForwardAuthAllow is the hot path of a check that passes, from a
// parsed request to a written answer, against BenchmarkEmptyHandler, the
// same request to a handler that does nothing; counting=off is the same
// path without per-key usage counting, to show what counting costs.
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
	ctx := request(reader.Token())
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		s.ServeFastHTTP(ctx)
	}
	if ctx.Response.StatusCode() != 200 || string(ctx.Response.Header.Peek(HeaderKeyID)) != reader.ID {
		b.Fatalf("not allowed: %s", ctx.Response.String())
	}
}

func BenchmarkEmptyHandler(b *testing.B) {
	ctx := request("")
	empty := func(*fasthttp.RequestCtx) {}
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		empty(ctx)
	}
}

// request is a parsed forward-auth request as nginx sends it.
func request(token string) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.SetRequestURI("/authn?scope=occupancy:read")
	req.Header.Set("X-Original-URI", "/v1/occupancy?floor=3")
	req.Header.Set("X-Api-Key", token)
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, nil, nil)
	return ctx
}
