package serve

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"keyward.dev/keyward/internal/index"
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

// BenchmarkForwardAuthLimits: the hot path of an allowed check of a key
// with limits (a rate and a daily quota it never reaches, so every call
// goes through the bucket and the quota and gets the RateLimit headers)
// against the same check of a key without, in interleaved rounds of the
// same run. Issue 16: limits on at ≥ 95 % of the throughput of limits off
// (reported as on/off-%).
func BenchmarkForwardAuthLimits(b *testing.B) {
	perDay := int64(10_000_000_000)
	s, capped, free := limitedServer(b, index.Limits{PerSecond: 1_000_000, Burst: 10_000_000, PerDay: perDay})
	s.Metrics = NewMetrics(prometheus.NewRegistry())
	on, off := request(capped.Token()), request(free.Token())
	run := func(ctx *fasthttp.RequestCtx, n int) time.Duration {
		start := time.Now()
		for range n {
			ctx.Response.Reset()
			s.ServeFastHTTP(ctx)
		}
		return time.Since(start)
	}
	const rounds, n = 9, 200_000
	var ratios []float64
	var onTotal time.Duration
	for b.Loop() {
		ratios = ratios[:0]
		onTotal = 0
		for range rounds {
			tOff := run(off, n)
			tOn := run(on, n)
			onTotal += tOn
			ratios = append(ratios, float64(tOff)/float64(tOn))
		}
	}
	if on.Response.StatusCode() != 200 || !bytes.Contains(on.Response.Header.Header(), []byte("\r\nRateLimit: ")) {
		b.Fatalf("the limited key: %s", on.Response.String())
	}
	if off.Response.StatusCode() != 200 || bytes.Contains(off.Response.Header.Header(), []byte("RateLimit")) {
		b.Fatalf("the key without limits: %s", off.Response.String())
	}
	slices.Sort(ratios)
	b.ReportMetric(100*ratios[len(ratios)/2], "on/off-%")
	b.ReportMetric(float64(onTotal.Nanoseconds())/float64(rounds*n), "ns/limited-check")
}
