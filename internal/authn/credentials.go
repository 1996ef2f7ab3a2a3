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

// The one table of where a credential may travel. Extraction reads these,
// the gRPC adapter maps them to Envoy's names, the strip lists (Envoy's
// headers_to_remove, the documented gateway configurations) remove them
// before a request goes upstream, and logs redact them: a name added here
// is read, stripped and redacted everywhere at once.
var (
	// CredentialHeaders are every header that may carry a key, canonical
	// (X-Api-Key), in the order they are read.
	CredentialHeaders = [...]string{HeaderAPIKey, HeaderAuthKey, HeaderAPIAuth, HeaderAuthorization}
	// QueryParams are the query parameters that may carry a key.
	QueryParams = [...]string{"_auth_key", "_api_auth"}
)

// LowerCredentialHeaders are CredentialHeaders in lower case, as HTTP/2
// and Envoy name them.
func LowerCredentialHeaders() []string {
	out := make([]string, len(CredentialHeaders))
	for i, h := range CredentialHeaders {
		out[i] = strings.ToLower(h)
	}
	return out
}

// IsQueryParam reports whether a (decoded) query parameter name carries a
// key.
func IsQueryParam(name string) bool {
	for _, p := range QueryParams {
		if name == p {
			return true
		}
	}
	return false
}

// Headers gives a request's header values by canonical name (X-Api-Key).
// The HTTP adapter reads fasthttp's headers, the review adapter
// HTTPHeader, the gRPC adapter Envoy's lower-case map.
type Headers interface {
	// Get returns the first value of a header.
	Get(canonical string) string
	// Repeated reports whether the header came more than once.
	Repeated(canonical string) bool
}

// HTTPHeader reads a net/http-style header map whose names are already
// canonical, by direct lookup: http.Header.Get would canonicalise every
// name again on the hot path.
type HTTPHeader map[string][]string

// Get returns the first value of a header given its canonical name.
func (h HTTPHeader) Get(canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Repeated reports whether a header has more than one value.
func (h HTTPHeader) Repeated(canonical string) bool { return len(h[canonical]) > 1 }

// ambiguous refuses a request with more than one credential: a proxy in
// between may read another one than keyward did, so even the same key
// twice in one header is refused.
var ambiguous = Credentials{Reason: ReasonAmbiguousCredentials,
	Message: "the request carries more than one API key (or one credential header twice); send exactly one"}

// Extract reads the credentials of a request: the CredentialHeaders
// (Authorization as Bearer or Basic), then, when allowQuery, the
// QueryParams of rawQuery. Two different credentials, or one credential
// header twice, are refused as ambiguous.
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
			found = ambiguous
			return false
		}
		return true
	}
	for _, name := range CredentialHeaders {
		// An empty first value counts as no header (a second one, if any,
		// is not read): only a present credential is checked for a twin.
		v := h.Get(name)
		if v == "" {
			continue
		}
		if h.Repeated(name) {
			return ambiguous
		}
		var c Credentials
		if name == HeaderAuthorization {
			c = fromAuthorization(v)
		} else {
			c = fromToken(strings.TrimSpace(v))
		}
		if !take(c) {
			return found
		}
	}
	queryKey, inQuery := false, 0
	// One pass over the query, and names that cannot be a key parameter
	// are not decoded: a long query costs linear time, not more.
	q := rawQuery
	if !mayCarryKey(q) {
		q = ""
	}
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		rawName, rawVal, _ := strings.Cut(pair, "=")
		if !mayCarryKey(rawName) {
			continue
		}
		name, err := url.QueryUnescape(rawName)
		if err != nil || !IsQueryParam(name) {
			continue
		}
		// The gateways strip key parameters by their literal names (an
		// underscore may come as %5F): a name encoded any other way would
		// be read here and forwarded upstream there.
		if underscores.Replace(rawName) != name {
			return Credentials{Reason: ReasonMalformedKey,
				Message: "percent-encode nothing in " + name + " but its underscores"}
		}
		v, err := url.QueryUnescape(rawVal)
		if err != nil {
			return Credentials{Reason: ReasonMalformedKey, Message: "the value of " + name + " is not valid percent-encoding"}
		}
		if v == "" {
			continue
		}
		queryKey = true
		if !allowQuery {
			continue
		}
		// One key parameter at most, as one credential header at most.
		if inQuery++; inQuery > 1 {
			return ambiguous
		}
		c := fromToken(v)
		c.Query = true
		if !take(c) {
			return found
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

var underscores = strings.NewReplacer("%5F", "_", "%5f", "_")

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
		if un, err := url.QueryUnescape(name); err == nil && IsQueryParam(un) {
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
