package app

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authorizationv1 "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// metricsAuth is the metrics servers' filter: the caller's bearer token is
// authenticated with a TokenReview and the request authorized with a
// SubjectAccessReview (verb get on the path as a non-resource URL), both
// through k8s.io/apiserver's delegating authenticator and authorizer with
// their caches, as controller-runtime's filters.WithAuthenticationAndAuthorization
// does. It differs in one answer: a token the API server does not accept
// is a 401, as kube-apiserver itself answers, where controller-runtime's
// filter answers 500 and logs an error for every such request (any pod
// that can reach the port could fill the log).
func metricsAuth(config *rest.Config, httpClient *http.Client) (metricsserver.Filter, error) {
	authn, err := authenticationv1.NewForConfigAndClient(config, httpClient)
	if err != nil {
		return nil, err
	}
	authz, err := authorizationv1.NewForConfigAndClient(config, httpClient)
	if err != nil {
		return nil, err
	}
	backoff := &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5}
	authenticator, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                &apiserver.AnonymousAuthConfig{Enabled: false},
		CacheTTL:                 time.Minute,
		TokenAccessReviewClient:  authn,
		TokenAccessReviewTimeout: 10 * time.Second,
		WebhookRetryBackoff:      backoff,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("metrics authentication: %w", err)
	}
	authorizerImpl, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: authz,
		AllowCacheTTL:             5 * time.Minute,
		DenyCacheTTL:              30 * time.Second,
		WebhookRetryBackoff:       backoff,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("metrics authorization: %w", err)
	}
	return func(log logr.Logger, next http.Handler) (http.Handler, error) {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			res, ok, err := authenticator.AuthenticateRequest(req)
			if err != nil || !ok {
				// Not err's text: it comes from authenticating what the
				// caller sent, and nothing of a caller's credential is
				// logged.
				log.V(1).Info("metrics: token not accepted", "path", req.URL.Path)
				w.Header().Set("WWW-Authenticate", `Bearer realm="keyward-metrics"`)
				http.Error(w, "Unauthorized: send a ServiceAccount token allowed to get "+req.URL.Path, http.StatusUnauthorized)
				return
			}
			decision, reason, err := authorizerImpl.Authorize(req.Context(), authorizer.AttributesRecord{
				User: res.User, Verb: strings.ToLower(req.Method), Path: req.URL.Path,
			})
			switch {
			case err != nil:
				log.Error(err, "metrics: SubjectAccessReview failed", "user", res.User.GetName())
				http.Error(w, "the API server could not be asked whether you may read this; retry", http.StatusServiceUnavailable)
			case decision != authorizer.DecisionAllow:
				log.V(1).Info("metrics: not allowed", "user", res.User.GetName(), "path", req.URL.Path, "reason", reason)
				http.Error(w, fmt.Sprintf("Forbidden: %s may not get %s", res.User.GetName(), req.URL.Path), http.StatusForbidden)
			default:
				next.ServeHTTP(w, req)
			}
		}), nil
	}, nil
}
