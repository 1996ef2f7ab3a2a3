package serve

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
)

// limitedServer serves one key limited to a burst of 3 at 1/s and 1,000
// calls a day, and one with no limits.
func limitedServer(t testing.TB, lim index.Limits) (*Server, keys.Key, keys.Key) {
	t.Helper()
	ix := index.New()
	add := func(name string, lim index.Limits) keys.Key {
		k, _ := keys.Generate()
		nn := types.NamespacedName{Namespace: "team-a", Name: name}
		ix.SetApiKey(nn, &index.ApiKey{UID: testUID(nn), Scopes: []string{"a", "occupancy:read"}, Limits: lim})
		ix.SetRecord(nn, &index.Record{Owner: testUID(nn), Keys: []index.Key{{ID: k.ID, Digest: k.Digest()}}})
		return k
	}
	capped := add("capped", lim)
	free := add("free", index.Limits{})
	ix.MarkSynced()
	return &Server{Decider: &authn.Decider{Index: ix}}, capped, free
}

// The header values, as the IETF draft's structured fields.
var (
	policyRE    = regexp.MustCompile(`^"rate";q=3;w=3, "day";q=1000;w=86400$`)
	rateLimitRE = regexp.MustCompile(`^"rate";r=(\d+);t=(\d+), "day";r=(\d+);t=(\d+)$`)
	rateOnlyRE  = regexp.MustCompile(`^"rate";r=\d+;t=\d+$`)
)

// TestForwardAuthLimits: a limited key's answers carry RateLimit-Policy
// and RateLimit whether allowed or refused; over its burst it gets 429
// rate_limited with Retry-After and a JSON reason; a key without limits
// gets none of these headers.
func TestForwardAuthLimits(t *testing.T) {
	s, capped, free := limitedServer(t, index.Limits{PerSecond: 1, Burst: 3, PerDay: 1000})
	h := handler(t, s)
	get := func(k keys.Key) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/authn", nil)
		r.Header.Set("X-Api-Key", k.Token())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for i := range 3 {
		w := get(capped)
		if w.Code != 200 {
			t.Fatalf("call %d of the burst: %d %s", i, w.Code, w.Body)
		}
		if p := w.Header().Get("RateLimit-Policy"); !policyRE.MatchString(p) {
			t.Fatalf("RateLimit-Policy %q", p)
		}
		m := rateLimitRE.FindStringSubmatch(w.Header().Get("RateLimit"))
		if m == nil || m[1] != []string{"2", "1", "0"}[i] || m[3] != []string{"999", "998", "997"}[i] {
			t.Fatalf("call %d: RateLimit %q", i, w.Header().Get("RateLimit"))
		}
		if w.Header().Get("Retry-After") != "" {
			t.Fatal("Retry-After on an allowed call")
		}
	}
	w := get(capped)
	var body struct {
		Allowed         bool
		Reason, Message string
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != 429 || body.Reason != authn.ReasonRateLimited ||
		w.Header().Get(HeaderReason) != authn.ReasonRateLimited || body.Message == "" {
		t.Fatalf("over the burst: %d %s", w.Code, w.Body)
	}
	if ra := w.Header().Get("Retry-After"); ra != "1" {
		t.Fatalf("Retry-After %q, want 1", ra)
	}
	if m := rateLimitRE.FindStringSubmatch(w.Header().Get("RateLimit")); m == nil || m[1] != "0" {
		t.Fatalf("RateLimit on the refusal %q", w.Header().Get("RateLimit"))
	}
	if w.Header().Get("WWW-Authenticate") != "" {
		t.Fatal("a 429 asks for credentials")
	}
	w = get(free)
	if w.Code != 200 || w.Header().Get("RateLimit") != "" || w.Header().Get("RateLimit-Policy") != "" {
		t.Fatalf("a key without limits: %d %v", w.Code, w.Header())
	}
}

// TestGRPCLimits: Envoy gets a denied response carrying HTTP 429 and the
// same headers, and on allow the headers to add to the client's answer.
func TestGRPCLimits(t *testing.T) {
	s, capped, _ := limitedServer(t, index.Limits{PerSecond: 1, Burst: 3, PerDay: 1000})
	c := grpcClient(t, s)
	check := func() *authv3.CheckResponse {
		resp, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/", Headers: map[string]string{"x-api-key": capped.Token()}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for range 3 {
		resp := check()
		got := map[string]string{}
		for _, h := range resp.GetOkResponse().GetResponseHeadersToAdd() {
			got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		if !policyRE.MatchString(got["ratelimit-policy"]) || !rateLimitRE.MatchString(got["ratelimit"]) {
			t.Fatalf("allowed: response headers to add %v", got)
		}
	}
	resp := check()
	d := resp.GetDeniedResponse()
	if codes.Code(resp.GetStatus().GetCode()) != codes.ResourceExhausted || d.GetStatus().GetCode() != 429 ||
		!strings.Contains(d.GetBody(), `"reason":"rate_limited"`) {
		t.Fatalf("over the burst: %v", resp)
	}
	got := map[string]string{}
	for _, h := range d.GetHeaders() {
		got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	if got["retry-after"] != "1" || !policyRE.MatchString(got["ratelimit-policy"]) || !rateLimitRE.MatchString(got["ratelimit"]) {
		t.Fatalf("denied headers %v", got)
	}
}

// TestReviewLimits: the review API answers allowed false with the reason
// and the retry time, and the headers for the gateway to send.
func TestReviewLimits(t *testing.T) {
	s, capped, _ := limitedServer(t, index.Limits{PerDay: 1000, PerSecond: 1, Burst: 3})
	h := handler(t, s)
	body := `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u1","headers":{"X-Api-Key":"` + capped.Token() + `"}}}`
	for range 3 {
		if _, out := review(t, h, body); !out.Response.Allowed || !rateLimitRE.MatchString(out.Response.Headers["RateLimit"]) {
			t.Fatalf("allowed: %+v", out.Response)
		}
	}
	w, out := review(t, h, body)
	r := out.Response
	if w.Code != 200 || r.Allowed || r.Status.Code != 429 || r.Status.Reason != authn.ReasonRateLimited ||
		r.Status.RetryAfterSeconds != 1 || r.Headers["Retry-After"] != "1" || !policyRE.MatchString(r.Headers["RateLimit-Policy"]) {
		t.Fatalf("over the burst: %d %+v", w.Code, r)
	}
}

// TestQuotaExceededAnswer: a key over its quota share gets 429
// quota_exceeded.
func TestQuotaExceededAnswer(t *testing.T) {
	s, capped, _ := limitedServer(t, index.Limits{PerDay: 2})
	h := handler(t, s)
	codes := []int{}
	var last *httptest.ResponseRecorder
	for range 3 {
		r := httptest.NewRequest("GET", "/authn", nil)
		r.Header.Set("X-Api-Key", capped.Token())
		last = httptest.NewRecorder()
		h.ServeHTTP(last, r)
		codes = append(codes, last.Code)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 || !strings.Contains(last.Body.String(), `"reason":"quota_exceeded"`) ||
		last.Header().Get("RateLimit-Policy") != `"day";q=2;w=86400` || !strings.HasPrefix(last.Header().Get("RateLimit"), `"day";r=0;t=`) ||
		last.Header().Get("Retry-After") != "5" {
		t.Fatalf("codes %v, last %d %v %s", codes, last.Code, last.Header(), last.Body)
	}
}

// TestOneReplicaRateUnderLoad: one endpoint on a real socket and the real
// clock; a key of 50/s takes its burst of 50 at once, then gets 50/s ± 5 %
// under 500/s offered for 10 s, every answer with correct headers.
func TestOneReplicaRateUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s of load")
	}
	s, capped, _ := limitedServer(t, index.Limits{PerSecond: 50, Burst: 50})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := s.HTTPServer()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	get := func() (int, http.Header) {
		req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/authn", nil)
		req.Header.Set("X-Api-Key", capped.Token())
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return 0, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	// The burst: back to back, 50 calls (and the ones the bucket refilled
	// meanwhile, one per 20 ms), then a refusal with Retry-After.
	burstStart := time.Now()
	allowedInBurst := 0
	for {
		code, h := get()
		if code == 429 {
			if h.Get("Retry-After") != "1" {
				t.Fatalf("the refusal after the burst: %v", h)
			}
			break
		}
		if code != 200 || allowedInBurst > 500 {
			t.Fatalf("call %d of the burst: %d", allowedInBurst, code)
		}
		allowedInBurst++
	}
	refilled := int(time.Since(burstStart) / (20 * time.Millisecond))
	if allowedInBurst < 50 || allowedInBurst > 50+refilled+1 {
		t.Fatalf("%d calls allowed back to back in %s; want the burst of 50 and the %d refilled meanwhile",
			allowedInBurst, time.Since(burstStart), refilled)
	}
	time.Sleep(time.Second) // the bucket fills again

	var allowed, refused atomic.Int64
	ticks := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range ticks {
				code, h := get()
				switch {
				case code == 200 && !rateOnlyRE.MatchString(h.Get("RateLimit")):
					t.Errorf("allowed without RateLimit: %v", h)
				case code == 200:
					allowed.Add(1)
				case code == 429 && h.Get("Retry-After") == "1" && h.Get("RateLimit-Policy") == `"rate";q=50;w=1`:
					refused.Add(1)
				default:
					t.Errorf("answer %d %v", code, h)
				}
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(2 * time.Millisecond) // 500/s
	for now := range tick.C {
		if now.Sub(start) >= 10*time.Second {
			break
		}
		ticks <- struct{}{}
	}
	tick.Stop()
	close(ticks)
	wg.Wait()
	elapsed := time.Since(start)
	rate := float64(allowed.Load()-50) / elapsed.Seconds()
	t.Logf("50/s, burst 50, 500/s offered for %s: %d allowed (%.1f/s after the burst), %d refused", elapsed.Round(time.Millisecond),
		allowed.Load(), rate, refused.Load())
	if rate < 47.5 || rate > 52.5 {
		t.Errorf("%.1f/s allowed; want 50/s ± 5 %%", rate)
	}
	// The load must be well over the limit for the figure to say anything:
	// a loaded machine sends fewer than the 5,000 asked for (a worker
	// still busy skips a tick), so ask for five times the limit.
	if offered := allowed.Load() + refused.Load(); offered < 5*int64(50*elapsed.Seconds()) {
		t.Errorf("only %d calls offered in %s, under five times the limit", offered, elapsed)
	}
}
