package authn

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
)

type fixture struct {
	ix  *index.Index
	d   *Decider
	now time.Time
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{ix: index.New(), now: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
	f.d = &Decider{Index: f.ix}
	f.ix.MarkSynced()
	return f
}

func (f *fixture) add(t testing.TB, name string, ak index.ApiKey) keys.Key {
	t.Helper()
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	nn := types.NamespacedName{Namespace: "team-a", Name: name}
	ak.UID = testUID(nn)
	f.ix.SetApiKey(nn, &ak)
	f.ix.SetRecord(nn, &index.Record{Owner: testUID(nn), Keys: []index.Key{{ID: k.ID, Digest: k.Digest()}}})
	return k
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestEveryCredentialFormIsRead(t *testing.T) {
	k, _ := keys.Generate()
	tok := k.Token()
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(k.ID+":"+k.Secret))
	for name, tc := range map[string]struct {
		h     http.Header
		query string
		q     bool
	}{
		"x-api-key":            {h: hdr("x-api-key", tok)},
		"X-API-KEY upper case": {h: hdr("X-API-KEY", tok)},
		"x-auth-key":           {h: hdr("x-auth-key", tok)},
		"x-api-auth":           {h: hdr("x-api-auth", tok)},
		"bearer":               {h: hdr("Authorization", "Bearer "+tok)},
		"bearer lower case":    {h: hdr("authorization", "bearer "+tok)},
		"basic":                {h: hdr("Authorization", basic)},
		"_auth_key":            {h: hdr(), query: "a=1&_auth_key=" + tok, q: true},
		"_api_auth":            {h: hdr(), query: "_api_auth=" + tok, q: true},
		"encoded name":         {h: hdr(), query: "%5Fapi_auth=" + tok, q: true},
		"same key twice":       {h: hdr("x-api-key", tok, "Authorization", basic)},
	} {
		c := Extract(HTTPHeader(tc.h), tc.query, true)
		if c.Reason != "" || c.ID != k.ID || c.Secret != k.Secret || c.Query != tc.q {
			t.Errorf("%s: got %+v", name, Credentials{ID: c.ID, Reason: c.Reason, Message: c.Message, Query: c.Query})
		}
	}
}

func TestBadCredentialsAreRefusedWithTheirReason(t *testing.T) {
	a, _ := keys.Generate()
	b, _ := keys.Generate()
	for name, tc := range map[string]struct {
		h      http.Header
		query  string
		allowQ bool
		reason string
	}{
		"nothing":             {hdr(), "", true, ReasonMissingKey},
		"query turned off":    {hdr(), "_auth_key=" + a.Token(), false, ReasonMissingKey},
		"junk":                {hdr("x-api-key", "hunter2"), "", true, ReasonMalformedKey},
		"typo":                {hdr("x-api-key", a.Token()[:20]+"x"+a.Token()[21:]), "", true, ReasonMalformedKey},
		"digest scheme":       {hdr("Authorization", "Digest abc"), "", true, ReasonMalformedKey},
		"basic not base64":    {hdr("Authorization", "Basic !!!"), "", true, ReasonMalformedKey},
		"basic without colon": {hdr("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(a.ID))), "", true, ReasonMalformedKey},
		"two keys":            {hdr("x-api-key", a.Token(), "x-auth-key", b.Token()), "", true, ReasonAmbiguousCredentials},
		"header and query":    {hdr("x-api-key", a.Token()), "_auth_key=" + b.Token(), true, ReasonAmbiguousCredentials},
		"key and junk":        {hdr("x-api-key", a.Token(), "Authorization", "Bearer junk"), "", true, ReasonAmbiguousCredentials},
		// A repeated header is two credentials, even with the same value:
		// a gateway or proxy in between may read the other one.
		"x-api-key twice":           {hdr("x-api-key", a.Token(), "x-api-key", b.Token()), "", true, ReasonAmbiguousCredentials},
		"same x-api-key twice":      {hdr("x-api-key", a.Token(), "X-Api-Key", a.Token()), "", true, ReasonAmbiguousCredentials},
		"authorization twice":       {hdr("Authorization", "Bearer "+a.Token(), "Authorization", "Bearer "+b.Token()), "", true, ReasonAmbiguousCredentials},
		"_auth_key twice":           {hdr(), "_auth_key=" + a.Token() + "&_auth_key=" + a.Token(), true, ReasonAmbiguousCredentials},
		"_auth_key and _api_auth":   {hdr(), "_auth_key=" + a.Token() + "&_api_auth=" + a.Token(), true, ReasonAmbiguousCredentials},
		"name encoded past the _":   {hdr(), "_%61uth_key=" + a.Token(), true, ReasonMalformedKey},
		"bad escape in the value":   {hdr(), "_auth_key=%zz", true, ReasonMalformedKey},
		"x-api-auth and empty twin": {hdr("x-api-auth", a.Token(), "x-api-auth", ""), "", true, ReasonAmbiguousCredentials},
	} {
		c := Extract(HTTPHeader(tc.h), tc.query, tc.allowQ)
		if c.Reason != tc.reason || c.Message == "" {
			t.Errorf("%s: reason %q (%s), want %q", name, c.Reason, c.Message, tc.reason)
		}
	}
}

func TestDecide(t *testing.T) {
	f := newFixture(t)
	reader := f.add(t, "reader", index.ApiKey{Scopes: []string{"occupancy:read", "devices:*"}})
	admin := f.add(t, "admin", index.ApiKey{Scopes: []string{"*"}})
	old := f.add(t, "old", index.ApiKey{Scopes: []string{"a"}, Archived: true})
	soon := f.add(t, "soon", index.ApiKey{Scopes: []string{"a"}, ExpiresAt: f.now.Add(time.Minute)})
	stranger, _ := keys.Generate()
	wrong := keys.Key{ID: reader.ID, Secret: stranger.Secret}

	cred := func(k keys.Key) Credentials { return Credentials{ID: k.ID, Secret: k.Secret} }
	for _, tc := range []struct {
		name     string
		k        keys.Key
		required Scopes
		code     int
		reason   string
	}{
		{"no scope needed", reader, nil, 200, ReasonAllowed},
		{"scope held", reader, Scopes{"occupancy:read"}, 200, ReasonAllowed},
		{"scope by pattern", reader, Scopes{"devices:reboot"}, 200, ReasonAllowed},
		{"two scopes, comma", reader, Scopes{"occupancy:read,devices:read"}, 200, ReasonAllowed},
		{"scope missing", reader, Scopes{"occupancy:write"}, 403, ReasonInsufficientScope},
		{"one of two missing", reader, Scopes{"occupancy:read", "agents:activate"}, 403, ReasonInsufficientScope},
		{"full access", admin, Scopes{"anything:at:all"}, 200, ReasonAllowed},
		{"unknown key", stranger, nil, 401, ReasonInvalidKey},
		{"wrong secret looks like unknown", wrong, nil, 401, ReasonInvalidKey},
		{"archived", old, nil, 401, ReasonArchived},
		{"not expired yet", soon, nil, 200, ReasonAllowed},
	} {
		v := f.d.Decide(cred(tc.k), tc.required, f.now)
		if v.Code != tc.code || v.Reason != tc.reason || v.Allowed != (tc.code == 200) {
			t.Errorf("%s: %d %s (%s), want %d %s", tc.name, v.Code, v.Reason, v.Message, tc.code, tc.reason)
		}
	}
	// Expiry is checked at request time, not when the controller notices.
	f.now = f.now.Add(time.Minute)
	if v := f.d.Decide(cred(soon), nil, f.now); v.Reason != ReasonExpired || v.Code != 401 {
		t.Errorf("expired key: %d %s", v.Code, v.Reason)
	}
	// An archived key's state is only told to whoever holds its secret.
	if v := f.d.Decide(Credentials{ID: old.ID, Secret: stranger.Secret}, nil, f.now); v.Reason != ReasonInvalidKey {
		t.Errorf("archived key with a wrong secret: %s", v.Reason)
	}
}

// A check names at most MaxRequiredScopes scopes: each one is matched
// against every scope of the key, and thousands of them made one check cost
// milliseconds.
func TestTooManyRequiredScopes(t *testing.T) {
	f := newFixture(t)
	k := f.add(t, "reader", index.ApiKey{Scopes: []string{"s:*"}})
	list := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "s:%d, ", i)
		}
		return b.String()
	}
	cred := Credentials{ID: k.ID, Secret: k.Secret}
	if v := f.d.Decide(cred, Scopes{list(MaxRequiredScopes)}, f.now); !v.Allowed {
		t.Fatalf("%d scopes: %s", MaxRequiredScopes, v.Reason)
	}
	for name, req := range map[string]Scopes{
		"one list":       {list(MaxRequiredScopes + 1)},
		"several lists":  {list(20), list(20)},
		"many tiny ones": {strings.Repeat("a ", 4000)},
	} {
		v := f.d.Decide(cred, req, f.now)
		if v.Code != 400 || v.Reason != ReasonTooManyScopes || v.Message == "" {
			t.Errorf("%s: %d %s", name, v.Code, v.Reason)
		}
		// Before the key is looked at: a bad request says nothing about it.
		if v.Identity.Known() {
			t.Errorf("%s: identity on a bad request", name)
		}
	}
}

// With a staleness limit, an index that has not heard from the API server
// for longer answers 503 stale (fails closed) until it has again.
func TestStaleIndexAnswers503(t *testing.T) {
	f := newFixture(t)
	k := f.add(t, "reader", index.ApiKey{Scopes: []string{"occupancy:read"}})
	w := f.ix.NewFreshness(f.now)
	w.Closed(f.now)
	cred := Credentials{ID: k.ID, Secret: k.Secret}
	f.ix.CheckStaleness(f.now.Add(time.Minute), 2*time.Minute)
	if v := f.d.Decide(cred, nil, f.now); !v.Allowed {
		t.Fatalf("within the limit: %s", v.Reason)
	}
	f.ix.CheckStaleness(f.now.Add(3*time.Minute), 2*time.Minute)
	if v := f.d.Decide(cred, nil, f.now); v.Code != 503 || v.Reason != ReasonStale || v.Message == "" {
		t.Fatalf("past the limit: %d %s", v.Code, v.Reason)
	}
	w.Opened(f.now.Add(3 * time.Minute))
	f.ix.CheckStaleness(f.now.Add(3*time.Minute), 2*time.Minute)
	if v := f.d.Decide(cred, nil, f.now); !v.Allowed {
		t.Fatalf("after the watch is back: %s", v.Reason)
	}
}

func TestNotReadyUntilSynced(t *testing.T) {
	d := &Decider{Index: index.New()}
	if v := d.Decide(Credentials{Reason: ReasonMissingKey}, nil, time.Now()); v.Code != 503 || v.Reason != ReasonNotReady {
		t.Fatalf("before sync: %d %s", v.Code, v.Reason)
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "devices:write", true}, {"*", "*", true}, {"devices:*", "devices:read", true},
		{"*:write", "devices:write", true}, {"*:write", "devices:read", false},
		{"devices:*", "devices", false}, {"devices:*", "devices:a:b", false},
		{"devices", "devices:read", false}, {"a:b", "a:b", true}, {"a:b", "a:c", false},
	} {
		if got := Match(tc.p, tc.s); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

func TestRedact(t *testing.T) {
	k, _ := keys.Generate()
	for _, uri := range []string{"/x?_auth_key=" + k.Token(), "/x?a=1&_api_auth=" + k.Token() + "&b=2", "/x?%5Fauth_key=" + k.Token()} {
		got := RedactURI(uri)
		if len(got) == 0 || contains(got, k.Secret) {
			t.Errorf("RedactURI(%q) = %q", uri, got)
		}
	}
	if got := RedactURI("/x?a=1"); got != "/x?a=1" {
		t.Errorf("RedactURI changed a clean URI: %q", got)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func FuzzExtract(f *testing.F) {
	k, _ := keys.Generate()
	f.Add("x-api-key", k.Token(), "")
	f.Add("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(k.ID+":"+k.Secret)), "")
	f.Add("Authorization", "Bearer "+k.Token(), "_auth_key="+k.Token())
	f.Add("x-auth-key", "", "%5Fapi_auth=%zz")
	f.Fuzz(func(t *testing.T, name, value, query string) {
		c := Extract(HTTPHeader(hdr(name, value)), query, true)
		if c.Reason == "" {
			// Whatever passes extraction is a well-formed key.
			if !keys.ValidID(c.ID) || !keys.ValidSecret(c.Secret) {
				t.Fatalf("extracted a malformed key from %q: %q", value, query)
			}
		} else if c.Message == "" || c.ID != "" {
			t.Fatalf("refusal without message or with a key: %+v", c.Reason)
		}
	})
}

// Usage is reported under the reasons of the verdicts it counts.
func TestOutcomeNamesAreReasons(t *testing.T) {
	for o, reason := range map[index.Outcome]string{
		index.Allowed: ReasonAllowed, index.WrongSecret: ReasonInvalidKey, index.Archived: ReasonArchived,
		index.Expired: ReasonExpired, index.InsufficientScope: ReasonInsufficientScope,
	} {
		if index.OutcomeNames[o] != reason {
			t.Errorf("outcome %d is named %q, its verdict's reason is %q", o, index.OutcomeNames[o], reason)
		}
	}
}

// testUID is the UID of the ApiKey nn and of its record's owner reference:
// the index serves a record only while the two agree.
func testUID(nn types.NamespacedName) types.UID { return types.UID("uid-" + nn.String()) }
