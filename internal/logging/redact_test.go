package logging

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"keyward.dev/keyward/internal/keys"
)

// Everything shaped like a keyward credential is redacted, wherever it
// sits in a line; the key ID of a token is kept (it is public, and what an
// operator needs to find the key).
func TestRedactFindsKeysAnywhere(t *testing.T) {
	k, _ := keys.Generate()
	tok := k.Token()
	basic := base64.StdEncoding.EncodeToString([]byte(k.ID + ":" + k.Secret))
	for _, line := range []string{
		tok,
		"uri=/authn?_auth_key=" + tok,
		"/v1/x;_auth_key=" + tok + ";y=1",
		"/v1/x?token=" + tok + "&a=b",
		"/authn/" + tok + "/x",
		"x-api-key: " + tok,
		`{"msg":"decision","uri":"/p?k=` + tok + `"}`,
		"Authorization: Bearer " + tok,
		"Authorization: Basic " + basic,
		"authorization: basic " + basic,
		"secret=" + k.Secret,
		"secret " + k.Secret + " and more",
		"a typo'd token " + tok[:30] + "x" + tok[31:],
		"a cut token " + tok[:40],
		"Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl",
	} {
		got := Redact(line)
		for _, secret := range []string{k.Secret, k.Secret[:20], basic, "c2lnbmF0dXJl"} {
			if strings.Contains(got, secret) {
				t.Errorf("%q\n  -> %q still holds %q", line, got, secret)
			}
		}
		if strings.Contains(line, tok[:len(keys.Prefix)+keys.KeyIDLen]) && !strings.Contains(got, k.ID) {
			t.Errorf("%q -> %q lost the key ID", line, got)
		}
	}
	// What is not a credential passes untouched: digests, UIDs, names.
	for _, line := range []string{
		"digest sha256:" + strings.Repeat("ab12", 16),
		"uid 0f8fad5b-d9cb-469f-a165-70867728950e",
		`{"level":"info","msg":"keys loaded","keys":100000}`,
		"key ID " + k.ID + " archived",
	} {
		if got := Redact(line); got != line {
			t.Errorf("%q changed to %q", line, got)
		}
	}
}

func TestLoggerRedacts(t *testing.T) {
	k, _ := keys.Generate()
	var buf bytes.Buffer
	log := New(&buf, MaxVerbosity)
	log.V(MaxVerbosity).Info("request", "uri", "/x;_api_auth="+k.Token(), "path", "/authn/"+k.Token())
	log.Error(errString("bad token "+k.Token()), "failed")
	if strings.Contains(buf.String(), k.Secret) || !strings.Contains(buf.String(), "REDACTED") {
		t.Fatalf("log holds the secret or redacted nothing:\n%s", buf.String())
	}
}

type errString string

func (e errString) Error() string { return string(e) }
