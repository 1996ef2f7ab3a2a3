package serve

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"keyward.dev/keyward/internal/authn"
)

// manyScopes names n distinct scopes.
func manyScopes(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = "occupancy:read"
	}
	return strings.Join(s, ",")
}

// A repeated credential header and too many required scopes are refused
// the same way on every interface: forward auth, review and gRPC.
func TestAmbiguousAndOversizedChecksOnEveryInterface(t *testing.T) {
	s, reader, old := newServer(t)
	h := handler(t, s)
	tok := reader.Token()

	forward := func(hdr http.Header, target string) (int, string) {
		r := httptest.NewRequest("GET", target, nil)
		r.Header = hdr
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Header().Get(HeaderReason)
	}
	for name, tc := range map[string]struct {
		hdr    http.Header
		target string
		code   int
		reason string
	}{
		"x-api-key twice":         {http.Header{"X-Api-Key": {tok, old.Token()}}, "/authn", 401, authn.ReasonAmbiguousCredentials},
		"same x-api-key twice":    {http.Header{"X-Api-Key": {tok, tok}}, "/authn", 401, authn.ReasonAmbiguousCredentials},
		"Authorization twice":     {http.Header{"Authorization": {"Bearer " + tok, "Bearer " + tok}}, "/authn", 401, authn.ReasonAmbiguousCredentials},
		"32 scopes":               {http.Header{"X-Api-Key": {tok}}, "/authn?scope=" + manyScopes(32), 200, ""},
		"33 scopes in the URL":    {http.Header{"X-Api-Key": {tok}}, "/authn?scope=" + manyScopes(33), 400, authn.ReasonTooManyScopes},
		"33 scopes over headers":  {http.Header{"X-Api-Key": {tok}, HeaderRequiredScopes: {manyScopes(20), manyScopes(13)}}, "/authn", 400, authn.ReasonTooManyScopes},
		"7,700 scopes in headers": {http.Header{"X-Api-Key": {tok}, HeaderRequiredScopes: {strings.Repeat("s,", 7700)}}, "/authn", 400, authn.ReasonTooManyScopes},
	} {
		if code, reason := forward(tc.hdr, tc.target); code != tc.code || reason != tc.reason {
			t.Errorf("forward auth, %s: %d %q, want %d %q", name, code, reason, tc.code, tc.reason)
		}
	}

	_, out := review(t, h, `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u",
		"headers":{"x-api-key":["`+tok+`","`+tok+`"]}}}`)
	if r := out.Response; r == nil || r.Status.Reason != authn.ReasonAmbiguousCredentials || r.Status.Code != 401 {
		t.Errorf("review, x-api-key twice: %+v", out.Response)
	}
	_, out = review(t, h, `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u",
		"headers":{"x-api-key":"`+tok+`","X-API-KEY":"`+tok+`"}}}`)
	if r := out.Response; r == nil || r.Status.Reason != authn.ReasonAmbiguousCredentials {
		t.Errorf("review, x-api-key in two spellings: %+v", out.Response)
	}
	_, out = review(t, h, `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u",
		"headers":{"x-api-key":"`+tok+`"},"requiredScopes":["`+manyScopes(33)+`"]}}`)
	if r := out.Response; r == nil || r.Status.Reason != authn.ReasonTooManyScopes || r.Status.Code != 400 {
		t.Errorf("review, 33 scopes: %+v", out.Response)
	}

	c := grpcClient(t, s)
	for name, tc := range map[string]struct {
		headers map[string]string
		ext     string
		code    codes.Code
		http    int
		reason  string
	}{
		// Envoy joins a repeated header's values with a comma.
		"x-api-key twice":     {map[string]string{"x-api-key": tok + "," + tok}, "", codes.Unauthenticated, 401, authn.ReasonAmbiguousCredentials},
		"authorization twice": {map[string]string{"authorization": "Bearer " + tok + ", Bearer " + tok}, "", codes.Unauthenticated, 401, authn.ReasonAmbiguousCredentials},
		"33 scopes":           {map[string]string{"x-api-key": tok}, manyScopes(33), codes.InvalidArgument, 400, authn.ReasonTooManyScopes},
	} {
		resp, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/", Headers: tc.headers}},
			ContextExtensions: map[string]string{"scopes": tc.ext},
		}})
		if err != nil {
			t.Fatal(err)
		}
		d := resp.GetDeniedResponse()
		if codes.Code(resp.GetStatus().GetCode()) != tc.code || int(d.GetStatus().GetCode()) != tc.http ||
			!strings.Contains(d.GetBody(), `"reason":"`+tc.reason+`"`) {
			t.Errorf("gRPC, %s: %v %d %s", name, resp.GetStatus(), d.GetStatus().GetCode(), d.GetBody())
		}
	}
}

func grpcClient(t *testing.T, s *Server) authv3.AuthorizationClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := s.GRPCServer()
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// A handler that panics (a bug) answers 500 internal_error, is counted and
// logged without the request, and the server goes on serving.
func TestAPanicAnswers500AndServingGoesOn(t *testing.T) {
	s, reader, _ := newServer(t)
	reg := prometheus.NewRegistry()
	s.Metrics = NewMetrics(reg)
	var logs strings.Builder
	s.Log = funcr.New(func(prefix, args string) { logs.WriteString(prefix + args + "\n") }, funcr.Options{Verbosity: 10})
	good := s.Decider
	s.Decider = &authn.Decider{} // no index: Decide dereferences nil
	h := handler(t, s)
	c := grpcClient(t, s)
	tok := reader.Token()

	r := httptest.NewRequest("GET", "/authn?_auth_key="+tok, nil)
	r.Header.Set("X-Api-Key", tok)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 500 || w.Header().Get(HeaderReason) != authn.ReasonInternalError {
		t.Errorf("forward auth: %d %s", w.Code, w.Body)
	}
	_, out := review(t, h, `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u","headers":{"x-api-key":"`+tok+`"}}}`)
	_ = out
	_, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/", Headers: map[string]string{"x-api-key": tok}}}}})
	if status.Code(err) != codes.Internal {
		t.Errorf("gRPC: %v", err)
	}
	if got := testutil.ToFloat64(s.Metrics.panics); got != 3 {
		t.Errorf("keyward_authn_panics_total %v, want 3", got)
	}
	if !strings.Contains(logs.String(), "panic") || strings.Contains(logs.String(), reader.Secret) {
		t.Errorf("the panic is not logged, or logged with the key:\n%s", logs.String())
	}

	s.Decider = good
	w = httptest.NewRecorder()
	r = httptest.NewRequest("GET", "/authn", nil)
	r.Header.Set("X-Api-Key", tok)
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Errorf("after the panics: %d %s", w.Code, w.Body)
	}
}

// Bodies are bounded by path before they are read: /authn takes none from
// the gateways keyward supports (4 KiB at most), /review up to 64 KiB.
func TestBodyLimitsByPath(t *testing.T) {
	s, reader, _ := newServer(t)
	h := handler(t, s)
	for _, tc := range []struct {
		path string
		size int
		code int
	}{
		{"/authn", 4 << 10, 200},
		{"/authn", 4<<10 + 1, 413},
		{"/authn/some/path", 8 << 10, 413},
		{"/review", 64<<10 + 1, 413},
	} {
		r := httptest.NewRequest("POST", tc.path, strings.NewReader(strings.Repeat("a", tc.size)))
		r.Header.Set("X-Api-Key", reader.Token())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.code {
			t.Errorf("POST %s with %d bytes: %d %s, want %d", tc.path, tc.size, w.Code, w.Body, tc.code)
		}
	}
	// A review just under the limit is read (and refused for what it is).
	body := `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u","path":"/` + strings.Repeat("a", 60<<10) + `"}}`
	w, out := review(t, h, body)
	if w.Code != 200 || out.Response == nil || out.Response.Status.Reason != authn.ReasonMissingKey {
		t.Errorf("a 60 KiB review: %d %.200s", w.Code, w.Body)
	}
}
