// Package serve adapts protocols to the authn decision: HTTP forward auth
// (nginx auth_request, Traefik forwardAuth, Envoy HTTP ext_authz), Envoy's
// gRPC ext_authz, and the JSON AuthReview. An adapter translates a request
// into one call of authn.Decider.Decide and the verdict back; it never
// decides.
package serve

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"keyward.dev/keyward/internal/authn"
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
}

// Handler serves /authn (and every path below it) and /review, and 404
// with a JSON reason elsewhere.
//
// Routing is two string tests, not a ServeMux: the mux's pattern matching
// was a sixth of the handler's time per check, and it cleans paths and
// redirects (a 301 for /authn//x), where a path below /authn is the
// original request's (Envoy's path_prefix) and must reach the check as it
// is.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/authn" || strings.HasPrefix(p, "/authn/"):
			s.forwardAuth(w, r)
		case p == "/review":
			s.review(w, r)
		default:
			writeError(w, http.StatusNotFound, ReasonNotFound, "no such endpoint: checks go to /authn (forward auth) or /review (AuthReview)")
		}
	})
}

// forwardAuth answers nginx auth_request, Traefik forwardAuth and Envoy's
// HTTP ext_authz. The original request's query comes from X-Original-URI or
// X-Forwarded-Uri, or, for Envoy with a path prefix, from this request's own
// URL; required scopes from the scope parameter of the auth URL and the
// X-Keyward-Required-Scopes header. Sources add up: a client can only make
// its own request stricter.
func (s *Server) forwardAuth(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	origQuery := r.URL.RawQuery
	if uri := firstHeader(r.Header, "X-Original-Uri", "X-Forwarded-Uri"); uri != "" {
		_, origQuery, _ = strings.Cut(uri, "?")
	}
	var buf [4]string
	required := scopesFromQuery(buf[:0], r.URL.RawQuery)
	required = append(required, r.Header[HeaderRequiredScopes]...)

	c := authn.Extract(authn.HTTPHeader(r.Header), origQuery, s.AllowQueryKeys)
	v := s.Decider.Decide(c, required, start)
	s.write(w, v)
	s.Metrics.Observe(v, start)
	if s.Log.V(2).Enabled() {
		s.Log.V(2).Info("decision", "reason", v.Reason, "keyId", keyID(v), "method", r.Method,
			"uri", authn.RedactURI(firstHeader(r.Header, "X-Original-Uri", "X-Forwarded-Uri")))
	}
}

func keyID(v authn.Verdict) string {
	if !v.Identity.Known() {
		return ""
	}
	return v.Identity.KeyID()
}

func firstHeader(h http.Header, names ...string) string {
	for _, n := range names {
		if v := h[n]; len(v) > 0 && v[0] != "" {
			return v[0]
		}
	}
	return ""
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

func (s *Server) write(w http.ResponseWriter, v authn.Verdict) {
	h := w.Header()
	if v.QueryKey {
		h["Warning"] = []string{queryKeyWarning}
	}
	if v.Allowed {
		e := v.Identity
		h[HeaderKeyID] = e.IDHeader()
		h[HeaderKey] = e.KeyHeader()
		h[HeaderScopes] = e.ScopesHeader()
		// No body and no explicit WriteHeader: net/http answers 200 with
		// Content-Length: 0 itself, and every byte or header more is paid on
		// each request by the gateway too.
		return
	}
	h["Content-Type"] = jsonType
	h[HeaderReason] = []string{v.Reason}
	if v.Code == http.StatusUnauthorized {
		h["Www-Authenticate"] = wwwAuthenticate(v.Reason)
	}
	w.WriteHeader(v.Code)
	_, _ = w.Write(denyBody(v))
}

var (
	jsonType   = []string{"application/json"}
	wwwMissing = []string{`Bearer realm="keyward"`}
	wwwInvalid = []string{`Bearer realm="keyward", error="invalid_token"`}
)

func wwwAuthenticate(reason string) []string {
	if reason == authn.ReasonMissingKey {
		return wwwMissing
	}
	return wwwInvalid
}

type denial struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func denyBody(v authn.Verdict) []byte {
	b, _ := json.Marshal(denial{Reason: v.Reason, Message: v.Message})
	return append(b, '\n')
}
