package serve

import (
	"context"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"keyward.dev/keyward/internal/authn"
)

// Authorization is Envoy's ext_authz gRPC service
// (envoy.service.auth.v3.Authorization/Check).
type Authorization struct {
	authv3.UnimplementedAuthorizationServer
	S *Server
}

// envoyHeaders reads Envoy's lower-case header map by canonical name.
type envoyHeaders map[string]string

// lowerNames maps the credential headers to Envoy's names without a
// lower-casing copy per check.
var lowerNames = func() map[string]string {
	m := map[string]string{}
	for i, l := range authn.LowerCredentialHeaders() {
		m[authn.CredentialHeaders[i]] = l
	}
	return m
}()

func (h envoyHeaders) Get(canonical string) string {
	if l, ok := lowerNames[canonical]; ok {
		return h[l]
	}
	return h[strings.ToLower(canonical)]
}

// Repeated reports whether the header came more than once: Envoy joins the
// values of a repeated header with commas, and no credential keyward reads
// holds one.
func (h envoyHeaders) Repeated(canonical string) bool {
	return strings.IndexByte(h.Get(canonical), ',') >= 0
}

// The identity headers as Envoy names them (lower case), built once rather
// than on every check.
var (
	grpcHeaderKeyID  = strings.ToLower(HeaderKeyID)
	grpcHeaderKey    = strings.ToLower(HeaderKey)
	grpcHeaderScopes = strings.ToLower(HeaderScopes)
)

// credentialHeaders are removed before the request goes upstream when
// StripCredentials is on.
var credentialHeaders = authn.LowerCredentialHeaders()

// GRPCServer returns a gRPC server of Envoy's ext_authz service with the
// limits of Limits: streams per connection, message size, keepalive pings
// and checks in flight.
func (s *Server) GRPCServer(extra ...grpc.ServerOption) *grpc.Server {
	l := s.Limits.withDefaults()
	inFlight := make(chan struct{}, l.MaxInFlight)
	gs := grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxConcurrentStreams(uint32(l.MaxStreamsPerConn)),
		grpc.MaxRecvMsgSize(l.MaxGRPCMessage),
		// A client that pings more often than this is sent GOAWAY; idle
		// connections are pinged, and dropped when they do not answer.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: 5 * time.Minute, Time: time.Minute, Timeout: 10 * time.Second}),
		grpc.ConnectionTimeout(l.ReadTimeout),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (_ any, err error) {
			select {
			case inFlight <- struct{}{}:
				defer func() { <-inFlight }()
			default:
				return nil, status.Error(codes.ResourceExhausted, "keyward is answering as many checks as it may at once; retry")
			}
			defer func() {
				if p := recover(); p != nil {
					s.panicked(p)
					err = status.Error(codes.Internal, authn.ReasonInternalError)
				}
			}()
			return next(ctx, req)
		}),
	}, extra...)...)
	authv3.RegisterAuthorizationServer(gs, &Authorization{S: s})
	return gs
}

// Check answers one ext_authz request. Required scopes come from the route's
// context extension "scopes" and the x-keyward-required-scopes header.
func (a *Authorization) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	s := a.S
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	headers := envoyHeaders(httpReq.GetHeaders())
	_, rawQuery, _ := strings.Cut(httpReq.GetPath(), "?")
	if httpReq.GetQuery() != "" {
		rawQuery = httpReq.GetQuery()
	}
	var buf [2]string
	required := authn.Scopes(buf[:0])
	if sc := req.GetAttributes().GetContextExtensions()["scopes"]; sc != "" {
		required = append(required, sc)
	}
	if sc := headers["x-keyward-required-scopes"]; sc != "" {
		required = append(required, sc)
	}
	v := s.Decider.Decide(authn.Extract(headers, rawQuery, s.AllowQueryKeys), required, start)
	s.Metrics.Observe(v, start)
	if s.Log.V(2).Enabled() {
		s.logDecision("grpc", v, httpReq.GetMethod(), httpReq.GetPath())
	}
	return checkResponse(v, s.StripCredentials), nil
}

func header(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func checkResponse(v authn.Verdict, strip bool) *authv3.CheckResponse {
	if v.Allowed {
		ok := &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{
			header(grpcHeaderKeyID, v.Identity.KeyID()),
			header(grpcHeaderKey, v.Identity.Key()),
			header(grpcHeaderScopes, v.Identity.ScopesHeader()[0]),
		}}
		if strip {
			ok.HeadersToRemove = credentialHeaders
			if v.QueryKey {
				ok.QueryParametersToRemove = authn.QueryParams[:]
			}
		}
		if v.QueryKey {
			ok.ResponseHeadersToAdd = []*corev3.HeaderValueOption{header("warning", queryKeyWarning)}
		}
		// The rate-limit headers go to the client with the upstream's answer.
		ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, grpcLimitHeaders(&v)...)
		return &authv3.CheckResponse{
			Status:       &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		}
	}
	code := codes.PermissionDenied
	switch v.Code {
	case http.StatusBadRequest:
		code = codes.InvalidArgument
	case http.StatusUnauthorized:
		code = codes.Unauthenticated
	case http.StatusServiceUnavailable:
		code = codes.Unavailable
	case http.StatusTooManyRequests:
		code = codes.ResourceExhausted
	}
	denied := &authv3.DeniedHttpResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.Code)},
		Body:    string(denyBody(v)),
		Headers: []*corev3.HeaderValueOption{header("content-type", "application/json")},
	}
	if v.Code == http.StatusUnauthorized {
		denied.Headers = append(denied.Headers, header("www-authenticate", string(wwwAuthenticate(v.Reason))))
	}
	denied.Headers = append(denied.Headers, grpcLimitHeaders(&v)...)
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(code), Message: v.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: denied},
	}
}

// grpcLimitHeaders are the rate-limit headers of a verdict, in Envoy's
// lower-case names.
func grpcLimitHeaders(v *authn.Verdict) []*corev3.HeaderValueOption {
	if !v.Limits.Limited() {
		return nil
	}
	var out []*corev3.HeaderValueOption
	var buf [160]byte
	limitHeaders(&v.Limits, buf[:], func(name string, value []byte) {
		out = append(out, header(strings.ToLower(name), string(value)))
	})
	return out
}
