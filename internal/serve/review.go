package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"keyward.dev/keyward/internal/authn"
)

// ReviewAPIVersion and ReviewKind identify an AuthReview.
const (
	ReviewAPIVersion = "keyward.dev/v1alpha1"
	ReviewKind       = "AuthReview"
	maxReviewBytes   = 64 << 10
)

// AuthReview asks whether a request's key is good, in the shape of a
// Kubernetes AdmissionReview: the request goes in, the response comes back
// in the same object.
type AuthReview struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Request    *ReviewRequest  `json:"request,omitempty"`
	Response   *ReviewResponse `json:"response,omitempty"`
}

// ReviewRequest is the request under review.
type ReviewRequest struct {
	UID    string `json:"uid"`
	Method string `json:"method,omitempty"`
	// Path may carry a query string.
	Path string `json:"path,omitempty"`
	// Headers by name (any case); several values of one name as a list.
	Headers        map[string]StringOrList `json:"headers,omitempty"`
	Query          map[string]StringOrList `json:"query,omitempty"`
	RequiredScopes []string                `json:"requiredScopes,omitempty"`
}

// ReviewResponse is keyward's answer.
type ReviewResponse struct {
	UID     string       `json:"uid"`
	Allowed bool         `json:"allowed"`
	Status  ReviewStatus `json:"status"`
	KeyID   string       `json:"keyId,omitempty"`
	// Key is the ApiKey's namespace/name.
	Key    string   `json:"key,omitempty"`
	Scopes []string `json:"scopes,omitempty"`
	// Headers are the answer's rate-limit headers (RateLimit-Policy,
	// RateLimit, and Retry-After on a refusal) when the key has limits,
	// for the gateway to send the client.
	Headers map[string]string `json:"headers,omitempty"`
}

// ReviewStatus is the HTTP status the gateway should answer with, and why.
type ReviewStatus struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	// RetryAfterSeconds says when a call refused for the key's limits
	// (429) may be tried again.
	RetryAfterSeconds int64 `json:"retryAfterSeconds,omitempty"`
}

// StringOrList accepts "v" or ["v1", "v2"].
type StringOrList []string

// UnmarshalJSON implements json.Unmarshaler.
func (s *StringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = StringOrList{one}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("want a string or a list of strings")
	}
	*s = list
	return nil
}

// DecodeReview reads an AuthReview and says precisely what is wrong with a
// bad one.
func DecodeReview(r io.Reader) (*AuthReview, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var rev AuthReview
	if err := dec.Decode(&rev); err != nil {
		return nil, fmt.Errorf("the body is not a valid AuthReview: %w", err)
	}
	if dec.More() {
		return nil, errors.New("the body holds more than one JSON value")
	}
	switch {
	case rev.APIVersion != ReviewAPIVersion || rev.Kind != ReviewKind:
		return nil, fmt.Errorf("apiVersion and kind must be %q and %q", ReviewAPIVersion, ReviewKind)
	case rev.Request == nil:
		return nil, errors.New("request is missing")
	case rev.Request.UID == "":
		return nil, errors.New("request.uid is missing")
	}
	return &rev, nil
}

func (s *Server) review(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	if !ctx.IsPost() {
		ctx.Response.Header.Set("Allow", fasthttp.MethodPost)
		writeReviewError(ctx, fasthttp.StatusMethodNotAllowed, "POST an AuthReview to /review")
		return
	}
	body := ctx.PostBody()
	if len(body) > maxReviewBytes {
		writeReviewError(ctx, fasthttp.StatusRequestEntityTooLarge, "an AuthReview may be at most 64 KiB")
		return
	}
	rev, err := DecodeReview(bytes.NewReader(body))
	if err != nil {
		writeReviewError(ctx, fasthttp.StatusBadRequest, err.Error())
		s.Metrics.Observe(authn.Verdict{Reason: authn.ReasonMalformedRequest}, start)
		return
	}
	req := rev.Request
	h := http.Header{}
	for k, vs := range req.Headers {
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	q := url.Values{}
	_, pathQuery, _ := strings.Cut(req.Path, "?")
	if pq, err := url.ParseQuery(pathQuery); err == nil {
		q = pq
	}
	for k, vs := range req.Query {
		q[k] = append(q[k], vs...)
	}
	required := append(authn.Scopes(nil), req.RequiredScopes...)
	v := s.Decider.Decide(authn.Extract(authn.HTTPHeader(h), q.Encode(), s.AllowQueryKeys), required, start)
	resp := &ReviewResponse{UID: req.UID, Allowed: v.Allowed,
		Status: ReviewStatus{Code: v.Code, Reason: v.Reason, Message: v.Message}}
	if e := v.Identity; e.Known() {
		resp.KeyID, resp.Key, resp.Scopes = e.KeyID(), e.Key(), e.Scopes()
	}
	if v.Limits.Limited() {
		resp.Headers = map[string]string{}
		var buf [160]byte
		limitHeaders(&v.Limits, buf[:], func(name string, value []byte) { resp.Headers[name] = string(value) })
		if v.Code == fasthttp.StatusTooManyRequests {
			resp.Status.RetryAfterSeconds = max(v.Limits.RetryAfter, 1)
		}
	}
	out := AuthReview{APIVersion: ReviewAPIVersion, Kind: ReviewKind, Response: resp}
	ctx.Response.Header.SetContentTypeBytes(jsonType)
	if v.QueryKey {
		ctx.Response.Header.SetCanonical(hdrWarning, warnQueryKy)
	}
	_ = json.NewEncoder(ctx).Encode(out)
	s.Metrics.Observe(v, start)
	if s.Log.V(2).Enabled() {
		s.logDecision("review", v, req.Method, req.Path)
	}
}

func writeReviewError(ctx *fasthttp.RequestCtx, code int, msg string) {
	writeError(ctx, code, authn.ReasonMalformedRequest, msg)
}
