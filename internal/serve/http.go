// Package serve adapts protocols to the authn decision: HTTP forward auth
// (nginx auth_request, Traefik forwardAuth, Envoy HTTP ext_authz), Envoy's
// gRPC ext_authz, and the JSON AuthReview. An adapter translates a request
// into one call of authn.Decider.Decide and the verdict back; it never
// decides.
package serve

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/go-logr/logr"
	"github.com/valyala/fasthttp"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/index"
)

// Headers keyward sends back on allow, for the gateway to pass upstream.
const (
	HeaderKeyID          = "X-Keyward-Key-Id"
	HeaderKey            = "X-Keyward-Key"
	HeaderScopes         = "X-Keyward-Scopes"
	HeaderRequiredScopes = "X-Keyward-Required-Scopes"
	// HeaderReason carries a denial's reason code, for gateways (nginx
	// auth_request) that answer the client with their own body.
	HeaderReason = "X-Keyward-Reason"
)

// ReasonNotFound answers a path that is neither /authn nor /review.
const ReasonNotFound = "not_found"

// queryKeyWarning advises the header form when a key came in the URL.
const queryKeyWarning = `299 keyward "API key sent in the query string, where it ends up in logs; send it in the x-api-key header instead"`

// Server answers checks over HTTP and gRPC with one decider.
type Server struct {
	Decider *authn.Decider
	// AllowQueryKeys accepts keys in the query string (_auth_key, _api_auth).
	AllowQueryKeys bool
	// StripCredentials asks Envoy to remove the key before the request goes
	// upstream (gRPC ext_authz).
	StripCredentials bool
	Metrics          *Metrics
	Log              logr.Logger
	// Limits bound what one client can hold; zero fields take defaults.
	Limits Limits
}

// Limits bound the resources clients can hold, so that a flood of
// connections, slow requests or huge ones leaves the endpoint answering
// the gateways (docs/hardening.md has the measurements behind them).
type Limits struct {
	// MaxConns caps open connections per port (HTTP: fasthttp's
	// Concurrency; gRPC: the listener). Beyond it a connection is refused.
	MaxConns int
	// MaxInFlight caps gRPC checks being answered at once; beyond it a
	// check gets RESOURCE_EXHAUSTED at once rather than queueing.
	MaxInFlight int
	// MaxStreamsPerConn is gRPC's MaxConcurrentStreams.
	MaxStreamsPerConn int
	// MaxGRPCMessage bounds a CheckRequest (Envoy's headers, 60 KiB by
	// default, and a body when with_request_body is set).
	MaxGRPCMessage int
	// MaxHeaderBytes bounds a request's line and headers, and is the read
	// buffer a connection holds while its request arrives: a connection
	// that never finishes its headers holds it until ReadTimeout.
	MaxHeaderBytes int
	// IdleTimeout closes an idle keep-alive HTTP connection; ReadTimeout
	// bounds reading a whole request from its first byte (a slow client
	// holds a connection no longer than this).
	IdleTimeout, ReadTimeout time.Duration
}

// Default limits.
const (
	DefaultMaxConns          = 8192
	DefaultMaxInFlight       = 1024
	DefaultMaxStreamsPerConn = 256
	DefaultMaxGRPCMessage    = 256 << 10
	// DefaultMaxHeaderBytes: nginx forwards the client's headers to
	// auth_request, and its own default allows 4 × 8 KiB of them.
	DefaultMaxHeaderBytes = 32 << 10
	DefaultIdleTimeout    = 30 * time.Second
	DefaultReadTimeout    = 5 * time.Second
)

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxConns, DefaultMaxConns)
	def(&l.MaxInFlight, DefaultMaxInFlight)
	def(&l.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	def(&l.MaxGRPCMessage, DefaultMaxGRPCMessage)
	def(&l.MaxHeaderBytes, DefaultMaxHeaderBytes)
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = DefaultReadTimeout
	}
	return l
}

// Limits of the HTTP interface.
const (
	// maxBodyBytes bounds any body; /review takes at most maxReviewBytes,
	// and forward auth maxForwardBodyBytes: the gateways send /authn no
	// body (Envoy's HTTP ext_authz may, with with_request_body, and
	// keyward does not read it).
	maxBodyBytes        = maxReviewBytes
	maxForwardBodyBytes = 4 << 10
)

// bodyLimit picks a request's body limit by its path, before the body is
// read.
func bodyLimit(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	// The checks gateways send carry no body: nothing to bound, and no
	// second parse of the URI on the hot path.
	if h.ContentLength() == 0 {
		return fasthttp.RequestConfig{}
	}
	if path, _ := splitURI(str(h.RequestURI())); path == "/review" {
		return fasthttp.RequestConfig{MaxRequestBodySize: maxReviewBytes}
	}
	return fasthttp.RequestConfig{MaxRequestBodySize: maxForwardBodyBytes}
}

// HTTPServer returns the server of /authn (and every path below it) and
// /review.
//
// It is fasthttp, not net/http: a check is a few hundred nanoseconds of
// work, and net/http's per-request costs around it (a header map built for
// every request and cloned for every answer, the three identity headers
// sorted and written through it) were larger than the check itself; the
// same three headers alone cost an empty net/http handler about a fifth of
// its throughput (docs/benchmarks.md). fasthttp parses into reused buffers
// and writes headers from a flat list. It still answers HTTP/1.0 and 1.1,
// keep-alive and pipelining, bodies by Content-Length or in chunks; what it
// cannot read (oversized or malformed requests) gets a JSON reason.
//
// Its limits: Limits.MaxConns connections; a request is read whole within
// ReadTimeout of its first byte; idle keep-alive connections close after
// IdleTimeout and, meanwhile, hold no read or write buffer
// (ReduceMemoryUsage); bodies by path (bodyLimit).
func (s *Server) HTTPServer() *fasthttp.Server {
	l := s.Limits.withDefaults()
	return &fasthttp.Server{
		Handler:               s.serveRecovering,
		ErrorHandler:          requestError,
		HeaderReceived:        bodyLimit,
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		ReadBufferSize:        l.MaxHeaderBytes,
		MaxRequestBodySize:    maxBodyBytes,
		Concurrency:           l.MaxConns,
		ReduceMemoryUsage:     true,
		ReadTimeout:           l.ReadTimeout,
		WriteTimeout:          5 * time.Second,
		IdleTimeout:           l.IdleTimeout,
		CloseOnShutdown:       true,
		// fasthttp's own error lines quote the request they could not
		// read, and with it any key: keep the contents out, and log only
		// what kind of error it was.
		SecureErrorLogMessage:        true,
		Logger:                       withheldLogger{s.Log},
		DisablePreParseMultipartForm: true,
	}
}

// serveRecovering answers a check whose handling panicked (a bug) with 500
// internal_error instead of losing the process and every check behind it.
func (s *Server) serveRecovering(ctx *fasthttp.RequestCtx) {
	defer func() {
		if p := recover(); p != nil {
			s.panicked(p)
			ctx.Response.Reset()
			writeError(ctx, fasthttp.StatusInternalServerError, authn.ReasonInternalError,
				"keyward failed to answer this check; it has been logged")
		}
	}()
	s.ServeFastHTTP(ctx)
}

// panicked logs a handler's panic by its stack alone, not its value or the
// request (either may hold a key), and counts it.
func (s *Server) panicked(p any) {
	s.Metrics.Panicked()
	s.Log.Error(fmt.Errorf("%T", p), "a check handler panicked; answered 500 internal_error and serving on",
		"stack", string(debug.Stack()))
}

// ServeFastHTTP routes by two prefix tests, not a router: a path below
// /authn is the original request's (Envoy's path_prefix) and must reach
// the check as it came, neither cleaned nor redirected.
func (s *Server) ServeFastHTTP(ctx *fasthttp.RequestCtx) {
	path, query := splitURI(str(ctx.Request.Header.RequestURI()))
	switch {
	case path == "/authn" || strings.HasPrefix(path, "/authn/"):
		s.forwardAuth(ctx, query)
	case path == "/review":
		s.review(ctx)
	default:
		writeError(ctx, fasthttp.StatusNotFound, ReasonNotFound,
			"no such endpoint: checks go to /authn (forward auth) or /review (AuthReview)")
	}
}

// splitURI splits a request target into path and raw query; an absolute
// form (http://host/path) loses its scheme and host.
func splitURI(uri string) (path, query string) {
	if !strings.HasPrefix(uri, "/") {
		if i := strings.Index(uri, "://"); i >= 0 {
			rest := uri[i+3:]
			if j := strings.IndexAny(rest, "/?"); j >= 0 {
				uri = rest[j:]
			} else {
				uri = "/"
			}
		}
	}
	path, query, _ = strings.Cut(uri, "?")
	return path, query
}

// str views bytes the request owns as a string, without a copy. The
// string is valid only while the request is being handled: nothing a
// check keeps (the verdict, logs, metrics) holds one.
func str(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// requestHeaders reads a request's headers by canonical name (X-Api-Key).
// fasthttp stores the names of a request's headers in that same form,
// whatever case they came in, so a lookup needs no normalising copy.
type requestHeaders struct{ h *fasthttp.RequestHeader }

func (r requestHeaders) Get(canonical string) string {
	return str(r.h.PeekCanonical(bytesOf(canonical)))
}

// Repeated reports whether the header came more than once.
func (r requestHeaders) Repeated(canonical string) bool {
	return len(r.h.PeekAll(canonical)) > 1
}

// forwardAuth answers nginx auth_request, Traefik forwardAuth and Envoy's
// HTTP ext_authz. The original request's query comes from X-Original-URI or
// X-Forwarded-Uri, or, for Envoy with a path prefix, from this request's own
// URL; required scopes from the scope parameter of the auth URL and the
// X-Keyward-Required-Scopes header. Sources add up: a client can only make
// its own request stricter.
func (s *Server) forwardAuth(ctx *fasthttp.RequestCtx, query string) {
	start := time.Now()
	h := requestHeaders{&ctx.Request.Header}
	origQuery := query
	origURI := firstHeader(h, "X-Original-Uri", "X-Forwarded-Uri")
	if origURI != "" {
		_, origQuery, _ = strings.Cut(origURI, "?")
	}
	var buf [4]string
	required := scopesFromQuery(buf[:0], query)
	for _, v := range ctx.Request.Header.PeekAll(HeaderRequiredScopes) {
		required = append(required, str(v))
	}

	c := authn.Extract(h, origQuery, s.AllowQueryKeys)
	v := s.Decider.Decide(c, required, start)
	if v.Code == fasthttp.StatusTooManyRequests {
		v.Code = limitedStatus(query)
	}
	s.write(&ctx.Response, v)
	s.Metrics.Observe(v, start)
	if s.Log.V(2).Enabled() {
		s.logDecision("forward auth", v, string(ctx.Method()), origURI)
	}
}

// logDecision logs a verdict at V(2): the reason, the key ID (public) and
// the request's method and URI with the key parameters' values replaced
// (the logger redacts anything else shaped like a key).
func (s *Server) logDecision(iface string, v authn.Verdict, method, uri string) {
	s.Log.V(2).Info("decision", "interface", iface, "reason", v.Reason, "keyId", keyID(v),
		"method", method, "uri", authn.RedactURI(uri))
}

func keyID(v authn.Verdict) string {
	if !v.Identity.Known() {
		return ""
	}
	return v.Identity.KeyID()
}

func firstHeader(h authn.Headers, names ...string) string {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			return v
		}
	}
	return ""
}

// limitedStatus is the status of a call refused for its key's limits:
// 429, or 403 when the auth URL says limited_status=403. nginx's
// auth_request turns every status but 2xx, 401 and 403 into 500 and drops
// the answer's headers, so its configuration (docs/gateways.md) asks for
// 403 and turns it back into 429 by the reason header.
func limitedStatus(rawQuery string) int {
	for rawQuery != "" {
		var p string
		p, rawQuery, _ = strings.Cut(rawQuery, "&")
		if p == "limited_status=403" {
			return fasthttp.StatusForbidden
		}
	}
	return fasthttp.StatusTooManyRequests
}

// scopesFromQuery appends the values of the scope parameters of rawQuery.
func scopesFromQuery(dst []string, rawQuery string) []string {
	for rawQuery != "" {
		var p string
		p, rawQuery, _ = strings.Cut(rawQuery, "&")
		name, val, _ := strings.Cut(p, "=")
		if name != "scope" || val == "" {
			continue
		}
		if v, err := url.QueryUnescape(val); err == nil {
			dst = append(dst, v)
		}
	}
	return dst
}

// Response header names in the canonical form fasthttp keeps them in, and
// fixed values.
var (
	hdrKeyID   = []byte(HeaderKeyID)
	hdrKey     = []byte(HeaderKey)
	hdrScopes  = []byte(HeaderScopes)
	hdrReason  = []byte(HeaderReason)
	hdrWarning = []byte("Warning")
	// As the IETF draft spells them: names are case-insensitive, and
	// SetCanonical takes them as they are.
	hdrRateLimitPolicy = []byte(HeaderRateLimitPolicy)
	hdrRateLimit       = []byte(HeaderRateLimit)
	hdrRetryAfter      = []byte(HeaderRetryAfter)
	hdrWWWAuth         = []byte("Www-Authenticate")
	jsonType           = []byte("application/json")
	wwwMissing         = []byte(`Bearer realm="keyward"`)
	wwwInvalid         = []byte(`Bearer realm="keyward", error="invalid_token"`)
	warnQueryKy        = []byte(queryKeyWarning)
)

// write answers a verdict. An allow is a 200 with the identity headers and
// no body: every byte more is paid on each request by the gateway too.
func (s *Server) write(resp *fasthttp.Response, v authn.Verdict) {
	h := &resp.Header
	if v.QueryKey {
		h.SetCanonical(hdrWarning, warnQueryKy)
	}
	if st := &v.Limits; st.Limited() {
		var buf [96]byte
		h.SetCanonical(hdrRateLimitPolicy, bytesOf(st.Policy))
		h.SetCanonical(hdrRateLimit, appendRateLimit(buf[:0], st))
		if st.Reason != index.LimitOK {
			h.SetCanonical(hdrRetryAfter, strconv.AppendInt(buf[:0], max(st.RetryAfter, 1), 10))
		}
	}
	if v.Allowed {
		e := v.Identity
		h.SetCanonical(hdrKeyID, bytesOf(e.KeyID()))
		h.SetCanonical(hdrKey, bytesOf(e.Key()))
		h.SetCanonical(hdrScopes, bytesOf(e.ScopesHeader()[0]))
		return
	}
	resp.SetStatusCode(v.Code)
	h.SetContentTypeBytes(jsonType)
	h.SetCanonical(hdrReason, bytesOf(v.Reason))
	if v.Code == fasthttp.StatusUnauthorized {
		h.SetCanonical(hdrWWWAuth, wwwAuthenticate(v.Reason))
	}
	resp.SetBodyRaw(denyBody(v))
}

func wwwAuthenticate(reason string) []byte {
	if reason == authn.ReasonMissingKey {
		return wwwMissing
	}
	return wwwInvalid
}

// bytesOf views a string as bytes for fasthttp, which copies them.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

type denial struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func denyBody(v authn.Verdict) []byte { return denialJSON(v.Reason, v.Message) }

func denialJSON(reason, msg string) []byte {
	b, _ := json.Marshal(denial{Reason: reason, Message: msg})
	return append(b, '\n')
}

// writeError answers a request that is no check at all, in the shape of a
// denial.
func writeError(ctx *fasthttp.RequestCtx, code int, reason, msg string) {
	ctx.Response.SetStatusCode(code)
	ctx.Response.Header.SetContentTypeBytes(jsonType)
	ctx.Response.Header.SetCanonical(hdrReason, bytesOf(reason))
	ctx.Response.SetBodyRaw(denialJSON(reason, msg))
}

// withheldLogger logs fasthttp's error lines by their format alone: their
// arguments may quote a request and the key in it.
type withheldLogger struct{ log logr.Logger }

func (l withheldLogger) Printf(format string, _ ...any) {
	l.log.V(1).Info("unreadable request or broken connection", "kind", format)
}

// requestError answers what the server could not read as a request.
func requestError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, authn.ReasonMalformedRequest,
			"the request body is too large: /authn takes at most 4 KiB (gateways send none), /review at most 64 KiB")
	case errors.As(err, &small):
		writeError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, authn.ReasonMalformedRequest,
			"the request line and headers are larger than this endpoint reads (32 KiB unless --max-header-bytes says otherwise)")
	default:
		// Not err's text: a parser's error may quote the request, and
		// with it a key.
		writeError(ctx, fasthttp.StatusBadRequest, authn.ReasonMalformedRequest, "the request is not valid HTTP/1.x")
	}
}

// Conns is the connection cap in effect.
func (l Limits) Conns() int { return l.withDefaults().MaxConns }
