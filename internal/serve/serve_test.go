package serve

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr/funcr"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"google.golang.org/grpc/codes"
	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
)

func newServer(t testing.TB) (*Server, keys.Key, keys.Key) {
	t.Helper()
	ix := index.New()
	add := func(name string, ak index.ApiKey) keys.Key {
		k, _ := keys.Generate()
		nn := types.NamespacedName{Namespace: "team-a", Name: name}
		ak.UID = testUID(nn)
		ix.SetApiKey(nn, &ak)
		ix.SetRecord(nn, &index.Record{Owner: testUID(nn), Keys: []index.Key{{ID: k.ID, Digest: k.Digest()}}})
		return k
	}
	reader := add("reader", index.ApiKey{Scopes: []string{"occupancy:read", "agents:activate"}})
	old := add("old", index.ApiKey{Scopes: []string{"a"}, Archived: true})
	ix.MarkSynced()
	return &Server{Decider: &authn.Decider{Index: ix}, AllowQueryKeys: true, StripCredentials: true}, reader, old
}

// handler serves s on a real fasthttp server over an in-memory listener
// and sends each request through it with net/http's client, so tests see
// exactly what a gateway sees on the wire.
func handler(t testing.TB, s *Server) http.Handler {
	t.Helper()
	l := fasthttputil.NewInmemoryListener()
	srv := s.HTTPServer()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(); _ = l.Close() })
	c := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return l.Dial()
	}}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.Clone(context.Background())
		r.RequestURI, r.URL.Scheme, r.URL.Host = "", "http", "keyward"
		resp, err := c.Do(r)
		if err != nil {
			t.Fatalf("%s %s: %v", r.Method, r.URL, err)
		}
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
}

func TestForwardAuth(t *testing.T) {
	s, reader, old := newServer(t)
	h := handler(t, s)
	for _, tc := range []struct {
		name, method, target string
		headers              map[string]string
		code                 int
		reason               string
	}{
		{"allow", "GET", "/authn", map[string]string{"x-api-key": reader.Token()}, 200, "allowed"},
		{"any method", "DELETE", "/authn", map[string]string{"x-api-key": reader.Token()}, 200, "allowed"},
		{"path below /authn (Envoy prefix)", "POST", "/authn/api/v1/occupancy?floor=3", map[string]string{"x-api-key": reader.Token()}, 200, "allowed"},
		{"scope in auth URL", "GET", "/authn?scope=occupancy:read", map[string]string{"x-api-key": reader.Token()}, 200, "allowed"},
		{"missing scope", "GET", "/authn?scope=occupancy:read&scope=devices:write", map[string]string{"x-api-key": reader.Token()}, 403, "insufficient_scope"},
		{"scope header", "GET", "/authn", map[string]string{"x-api-key": reader.Token(), HeaderRequiredScopes: "devices:write"}, 403, "insufficient_scope"},
		{"no key", "GET", "/authn", nil, 401, "missing_key"},
		{"junk", "GET", "/authn", map[string]string{"x-api-key": "junk"}, 401, "malformed_key"},
		{"archived", "GET", "/authn", map[string]string{"x-api-key": old.Token()}, 401, "archived"},
		{"query via X-Original-URI", "GET", "/authn", map[string]string{"X-Original-URI": "/v1/x?_auth_key=" + reader.Token()}, 200, "allowed"},
		{"query via X-Forwarded-Uri", "GET", "/authn", map[string]string{"X-Forwarded-Uri": "/v1/x?_api_auth=" + reader.Token()}, 200, "allowed"},
		{"two keys", "GET", "/authn", map[string]string{"x-api-key": reader.Token(), "x-auth-key": old.Token()}, 401, "ambiguous_credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			var body struct {
				Allowed bool   `json:"allowed"`
				Reason  string `json:"reason"`
				Message string `json:"message"`
			}
			if w.Code == 200 {
				// An allow is its status and identity headers; no body.
				if w.Body.Len() != 0 {
					t.Fatalf("allow with a body %q", w.Body)
				}
				body.Allowed, body.Reason = true, "allowed"
			} else if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q is not JSON: %v", w.Body, err)
			} else if w.Header().Get(HeaderReason) != body.Reason {
				t.Errorf("X-Keyward-Reason %q, body reason %q", w.Header().Get(HeaderReason), body.Reason)
			}
			if w.Code != tc.code || body.Reason != tc.reason || body.Allowed != (tc.code == 200) {
				t.Fatalf("%d %+v, want %d %s", w.Code, body, tc.code, tc.reason)
			}
			if tc.code == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tc.code != 200 && body.Message == "" {
				t.Error("denial without a message")
			}
			if tc.code == 200 {
				if w.Header().Get(HeaderKeyID) != reader.ID || w.Header().Get(HeaderKey) != "team-a/reader" ||
					w.Header().Get(HeaderScopes) != "occupancy:read,agents:activate" {
					t.Errorf("identity headers %v", w.Header())
				}
			} else if w.Header().Get(HeaderKeyID) != "" {
				t.Error("identity headers on a denial")
			}
			wantWarning := strings.Contains(tc.name, "query")
			if got := w.Header().Get("Warning") != ""; got != wantWarning {
				t.Errorf("Warning header present: %v, want %v", got, wantWarning)
			}
			if strings.Contains(w.Body.String(), reader.Secret) {
				t.Error("the answer carries the secret")
			}
		})
	}
}

// Every path below /authn is a check, however odd (it is the original
// request's path under Envoy's path_prefix): no redirect, no cleaning.
// Anything else is a 404 with a reason, not a check.
func TestRouting(t *testing.T) {
	s, reader, _ := newServer(t)
	h := handler(t, s)
	for _, tc := range []struct {
		target string
		code   int
		reason string
	}{
		{"/authn", 200, ""},
		{"/authn/", 200, ""},
		{"/authn//api/../v1/x?y=1", 200, ""},
		{"/authnx", 404, ReasonNotFound},
		{"/", 404, ReasonNotFound},
		{"/review/x", 404, ReasonNotFound},
		{"/metrics", 404, ReasonNotFound},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.URL.Path, r.URL.RawQuery, _ = strings.Cut(tc.target, "?")
		r.Header.Set("X-Api-Key", reader.Token())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var body struct{ Reason string }
		_ = json.Unmarshal(w.Body.Bytes(), &body)
		if w.Code != tc.code || body.Reason != tc.reason {
			t.Errorf("%s: %d %q, want %d %q", tc.target, w.Code, body.Reason, tc.code, tc.reason)
		}
	}
}

func TestQueryKeysCanBeTurnedOff(t *testing.T) {
	s, reader, _ := newServer(t)
	s.AllowQueryKeys = false
	r := httptest.NewRequest("GET", "/authn", nil)
	r.Header.Set("X-Original-URI", "/x?_auth_key="+reader.Token())
	w := httptest.NewRecorder()
	handler(t, s).ServeHTTP(w, r)
	if w.Code != 401 || !strings.Contains(w.Body.String(), "turned off") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func review(t *testing.T, h http.Handler, body string) (*httptest.ResponseRecorder, AuthReview) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("POST", "/review", strings.NewReader(body)))
	var out AuthReview
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return w, out
}

func TestReview(t *testing.T) {
	s, reader, _ := newServer(t)
	h := handler(t, s)
	w, out := review(t, h, `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u-1","method":"GET",
		"path":"/v1/occupancy","headers":{"X-Api-Key":"`+reader.Token()+`"},"requiredScopes":["occupancy:read"]}}`)
	r := out.Response
	if w.Code != 200 || r == nil || !r.Allowed || r.UID != "u-1" || r.Status.Code != 200 || r.KeyID != reader.ID || r.Key != "team-a/reader" {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	_, out = review(t, h, `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u-2",
		"query":{"_auth_key":"`+reader.Token()+`"},"requiredScopes":["devices:write"]}}`)
	if r := out.Response; r == nil || r.Allowed || r.Status.Code != 403 || r.Status.Reason != "insufficient_scope" || r.UID != "u-2" {
		t.Fatalf("%+v", out.Response)
	}
	for name, tc := range map[string]struct{ body, says string }{
		"not JSON":      {`{"apiVersion":`, "not a valid AuthReview"},
		"wrong kind":    {`{"apiVersion":"v1","kind":"Pod","request":{"uid":"x"}}`, `apiVersion and kind must be "keyward.dev/v1alpha1" and "AuthReview"`},
		"no request":    {`{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview"}`, "request is missing"},
		"no uid":        {`{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{}}`, "request.uid is missing"},
		"typo in field": {`{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"x","requiredScope":["a"]}}`, `unknown field "requiredScope"`},
		"bad header":    {`{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"x","headers":{"a":1}}}`, "want a string or a list of strings"},
	} {
		w, _ := review(t, h, tc.body)
		var d denial
		_ = json.Unmarshal(w.Body.Bytes(), &d)
		if w.Code != 400 || !strings.Contains(d.Message, tc.says) || d.Reason != "malformed_request" {
			t.Errorf("%s: %d %s; want 400 saying %q", name, w.Code, w.Body, tc.says)
		}
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/review", nil))
	if w.Code != 405 {
		t.Errorf("GET /review: %d", w.Code)
	}
}

func FuzzDecodeReview(f *testing.F) {
	f.Add(`{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u","headers":{"x-api-key":["a","b"]}}}`)
	f.Add(`{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u","query":{"_auth_key":"x"}}}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, body string) {
		rev, err := DecodeReview(strings.NewReader(body))
		if err == nil && (rev.Request == nil || rev.Request.UID == "") {
			t.Fatal("accepted a review without request or uid")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("refusal without a message")
		}
	})
}

func TestGRPCCheckWithEnvoysClient(t *testing.T) {
	s, reader, old := newServer(t)
	c := grpcClient(t, s)
	check := func(headers map[string]string, path string, ext map[string]string) *authv3.CheckResponse {
		t.Helper()
		resp, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: path, Headers: headers,
			}},
			ContextExtensions: ext,
		}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	resp := check(map[string]string{"x-api-key": reader.Token()}, "/v1/occupancy", map[string]string{"scopes": "occupancy:read"})
	ok := resp.GetOkResponse()
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK || ok == nil {
		t.Fatalf("allow: %v", resp)
	}
	got := map[string]string{}
	for _, h := range ok.GetHeaders() {
		got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	if got["x-keyward-key-id"] != reader.ID || got["x-keyward-key"] != "team-a/reader" {
		t.Errorf("identity headers %v", got)
	}
	if !strings.Contains(strings.Join(ok.GetHeadersToRemove(), ","), "x-api-key") {
		t.Errorf("credential header not removed: %v", ok.GetHeadersToRemove())
	}

	for _, tc := range []struct {
		name    string
		headers map[string]string
		path    string
		ext     map[string]string
		code    codes.Code
		http    int
		reason  string
	}{
		{"missing scope", map[string]string{"authorization": "Bearer " + reader.Token()}, "/", map[string]string{"scopes": "devices:write"}, codes.PermissionDenied, 403, "insufficient_scope"},
		{"no key", map[string]string{}, "/", nil, codes.Unauthenticated, 401, "missing_key"},
		{"archived", map[string]string{"x-api-key": old.Token()}, "/", nil, codes.Unauthenticated, 401, "archived"},
		{"query key allowed", map[string]string{}, "/x?_auth_key=" + reader.Token(), nil, codes.OK, 0, ""},
	} {
		resp := check(tc.headers, tc.path, tc.ext)
		if codes.Code(resp.GetStatus().GetCode()) != tc.code {
			t.Errorf("%s: status %v", tc.name, resp.GetStatus())
			continue
		}
		if tc.code == codes.OK {
			if params := resp.GetOkResponse().GetQueryParametersToRemove(); len(params) == 0 {
				t.Errorf("%s: the query key is not removed", tc.name)
			}
			continue
		}
		d := resp.GetDeniedResponse()
		if int(d.GetStatus().GetCode()) != tc.http || !strings.Contains(d.GetBody(), `"reason":"`+tc.reason+`"`) {
			t.Errorf("%s: denied %d %s", tc.name, d.GetStatus().GetCode(), d.GetBody())
		}
	}
}

// What the server cannot read as a request gets a 4xx with a JSON reason,
// and the answer never quotes the request (it may carry a key).
func TestUnreadableRequests(t *testing.T) {
	s, reader, _ := newServer(t)
	var logs strings.Builder
	var mu sync.Mutex
	s.Log = funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logs.WriteString(prefix + args + "\n")
	}, funcr.Options{Verbosity: 10})
	l := fasthttputil.NewInmemoryListener()
	srv := s.HTTPServer()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(); _ = l.Close() })
	send := func(raw string) string {
		t.Helper()
		c, err := l.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() { _, _ = io.WriteString(c, raw) }()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	token := reader.Token()
	for _, tc := range []struct {
		name, raw, status string
	}{
		{"headers over 32 KiB", "GET /authn HTTP/1.1\r\nHost: k\r\nX-Api-Key: " + token + "\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n", "431"},
		{"broken request line", "GET " + token + "\r\n\r\n", "400"},
		{"body over 1 MiB", "POST /review HTTP/1.1\r\nHost: k\r\nContent-Length: 2000000\r\nX-Api-Key: " + token + "\r\n\r\n" + strings.Repeat("a", 2000000), "413"},
	} {
		got := send(tc.raw)
		if !strings.HasPrefix(got, "HTTP/1.1 "+tc.status) || !strings.Contains(got, `"reason":"malformed_request"`) {
			t.Errorf("%s: %.300q; want %s with a JSON reason", tc.name, got, tc.status)
		}
		if strings.Contains(got, token) || strings.Contains(got, reader.Secret) {
			t.Errorf("%s: the answer quotes the key", tc.name)
		}
	}
	mu.Lock()
	logged := logs.String()
	mu.Unlock()
	if !strings.Contains(logged, "unreadable request") || strings.Contains(logged, token) || strings.Contains(logged, reader.Secret) {
		t.Errorf("logs quote the key or say nothing:\n%s", logged)
	}
	// Good requests on the same server still pass, header names in any
	// case, HTTP/1.0 too.
	for _, raw := range []string{
		"GET /authn HTTP/1.0\r\nX-Api-Key: " + token + "\r\n\r\n",
		"GET /authn HTTP/1.1\r\nHost: k\r\nx-api-key: " + token + "\r\nconnection: close\r\n\r\n",
		"GET /authn HTTP/1.1\r\nHost: k\r\nAUTHORIZATION: Bearer " + token + "\r\nConnection: close\r\n\r\n",
		"GET /authn HTTP/1.1\r\nHost: k\r\nx-original-uri: /v1/x?_auth_key=" + token + "\r\nConnection: close\r\n\r\n",
	} {
		if got := send(raw); !strings.HasPrefix(got, "HTTP/1.1 200") || !strings.Contains(got, "X-Keyward-Key-Id: "+reader.ID) {
			t.Errorf("%.80q: %.300q", raw, got)
		}
	}
	if got := send("GET /authn HTTP/1.1\r\nHost: k\r\nx-keyward-required-scopes: devices:write\r\nX-API-KEY: " + token +
		"\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 403") {
		t.Errorf("required scope in a lower-case header: %.300q", got)
	}
}

// FuzzServeRaw parses raw bytes as one connection's requests, the way the
// server does, and answers each: whatever comes, no panic, no 5xx other
// than 503 not_ready, and no answer quotes a key's secret.
func FuzzServeRaw(f *testing.F) {
	s, reader, _ := newServer(f)
	tok := reader.Token()
	f.Add("GET /authn?scope=occupancy:read HTTP/1.1\r\nHost: k\r\nX-Api-Key: " + tok + "\r\n\r\n")
	f.Add("POST /review HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\n\r\n{}")
	f.Add("GET /authn HTTP/1.1\r\nAuthorization: Basic " + base64.StdEncoding.EncodeToString([]byte(reader.ID+":"+reader.Secret)) + "\r\n\r\n")
	f.Add("GET /authn/x?_auth_key=" + tok + " HTTP/1.0\r\n\r\nGET /authn HTTP/1.1\r\n\r\n")
	f.Add("GET /authn HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		br := bufio.NewReader(strings.NewReader(raw))
		for range 4 {
			var req fasthttp.Request
			var ctx fasthttp.RequestCtx
			err := req.ReadLimitBody(br, maxBodyBytes)
			ctx.Init(&req, nil, nil)
			if err != nil {
				requestError(&ctx, err)
			} else {
				s.ServeFastHTTP(&ctx)
			}
			out := ctx.Response.String()
			if code := ctx.Response.StatusCode(); code >= 500 && code != 503 {
				t.Fatalf("server error %d: %q", code, out)
			}
			if strings.Contains(out, reader.Secret) {
				t.Fatal("an answer quotes the secret")
			}
			if err != nil {
				return
			}
		}
	})
}

// testUID is the UID of the ApiKey nn and of its record's owner reference:
// the index serves a record only while the two agree.
func testUID(nn types.NamespacedName) types.UID { return types.UID("uid-" + nn.String()) }
