package authn

import (
	"encoding/base64"
	"net/url"
	"strings"

	"keyward.dev/keyward/internal/keys"
)

// Credentials are what a request presented, parsed: a key ID and secret,
// or the reason it presented no usable key.
type Credentials struct {
	ID, Secret string
	// Query: the key came from the query string.
	Query bool
	// Reason and Message are set when there is no usable key.
	Reason, Message string
}

// Header names keyward reads, in the order it reads them.
const (
	HeaderAPIKey        = "X-Api-Key"
	HeaderAuthKey       = "X-Auth-Key"
	HeaderAPIAuth       = "X-Api-Auth"
	HeaderAuthorization = "Authorization"
)

// Headers gives a request's header values by canonical name (X-Api-Key).
// http.Header satisfies it; the gRPC adapter wraps Envoy's lower-case map.
type Headers interface {
	Get(canonical string) string
}

// HTTPHeader reads a net/http server request's headers, whose names the
// server has already made canonical, by direct lookup: http.Header.Get
// would canonicalise every name again on the hot path.
type HTTPHeader map[string][]string

// Get returns the first value of a header given its canonical name.
func (h HTTPHeader) Get(canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// QueryParams are the query parameters that may carry a key.
var QueryParams = [...]string{"_auth_key", "_api_auth"}

// Extract reads the credentials of a request: the headers x-api-key,
// x-auth-key, x-api-auth, Authorization (Bearer or Basic), then, when
// allowQuery, the query parameters _auth_key and _api_auth of rawQuery.
// Two different credentials in one request are refused as ambiguous.
func Extract(h Headers, rawQuery string, allowQuery bool) Credentials {
	var found Credentials
	n := 0
	take := func(c Credentials) bool {
		n++
		if n == 1 {
			found = c
			return true
		}
		if c.ID != found.ID || c.Secret != found.Secret || c.Reason != found.Reason {
			found = Credentials{Reason: ReasonAmbiguousCredentials,
				Message: "the request carries more than one different API key; send exactly one"}
			return false
		}
		return true
	}
	for _, name := range [...]string{HeaderAPIKey, HeaderAuthKey, HeaderAPIAuth} {
		if v := h.Get(name); v != "" && !take(fromToken(strings.TrimSpace(v))) {
			return found
		}
	}
	if v := h.Get(HeaderAuthorization); v != "" && !take(fromAuthorization(v)) {
		return found
	}
	queryKey := false
	if mayCarryKey(rawQuery) {
		q, err := url.ParseQuery(rawQuery)
		for _, p := range QueryParams {
			for _, v := range q[p] {
				if v == "" {
					continue
				}
				queryKey = true
				if !allowQuery {
					continue
				}
				c := fromToken(v)
				c.Query = true
				if !take(c) {
					return found
				}
			}
		}
		if err != nil && n == 0 && allowQuery {
			return Credentials{Reason: ReasonMalformedKey, Message: "the query string cannot be parsed"}
		}
	}
	if n == 0 {
		if queryKey {
			return Credentials{Reason: ReasonMissingKey,
				Message: "API keys in the query string are turned off here; send the key in the x-api-key header"}
		}
		return Credentials{Reason: ReasonMissingKey,
			Message: "no API key: send it in the x-api-key header or as Authorization: Bearer <token>"}
	}
	return found
}

var (
	malformedToken = Credentials{Reason: ReasonMalformedKey,
		Message: "the API key is not a keyward token (kw_<keyId>_<secret><checksum>); check it was copied whole"}
	malformedBasic = Credentials{Reason: ReasonMalformedKey,
		Message: "Basic credentials must be the key ID as user and the secret as password"}
	unsupportedScheme = Credentials{Reason: ReasonMalformedKey,
		Message: "the Authorization scheme is not supported; use Bearer <token> or Basic <keyId:secret>"}
)

func fromToken(v string) Credentials {
	id, secret, err := keys.Parse(v)
	if err != nil {
		return malformedToken
	}
	return Credentials{ID: id, Secret: secret}
}

func fromAuthorization(v string) Credentials {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
	rest = strings.TrimSpace(rest)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return fromToken(rest)
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return malformedBasic
		}
		id, secret, ok := strings.Cut(string(raw), ":")
		if !ok || !keys.ValidID(id) || !keys.ValidSecret(secret) {
			return malformedBasic
		}
		return Credentials{ID: id, Secret: secret}
	default:
		return unsupportedScheme
	}
}

// mayCarryKey is a cheap test that a query string might hold a key
// parameter (percent-encoded names included), before it is parsed.
func mayCarryKey(rawQuery string) bool {
	return strings.Contains(rawQuery, "auth") || strings.Contains(rawQuery, "%")
}

// RedactQuery replaces the values of key-carrying query parameters, so a
// URL can be logged.
func RedactQuery(rawQuery string) string {
	if !mayCarryKey(rawQuery) {
		return rawQuery
	}
	parts := strings.Split(rawQuery, "&")
	for i, p := range parts {
		name, _, _ := strings.Cut(p, "=")
		if un, err := url.QueryUnescape(name); err == nil && (un == "_auth_key" || un == "_api_auth") {
			parts[i] = name + "=REDACTED"
		}
	}
	return strings.Join(parts, "&")
}

// RedactURI redacts the query of a request URI (path?query).
func RedactURI(uri string) string {
	path, q, ok := strings.Cut(uri, "?")
	if !ok {
		return uri
	}
	return path + "?" + RedactQuery(q)
}
