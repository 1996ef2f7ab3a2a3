package logging

import (
	"io"
	"regexp"
	"strings"
)

// Shapes of credentials in text. A keyward token keeps its key ID (public,
// and what finds the key) and loses the rest; a bare secret (43 base62
// characters, with or without its checksum) and Bearer or Basic
// credentials of any kind (API server tokens too) lose everything.
var (
	tokenShape  = regexp.MustCompile(`kw_([0-9A-Za-z]{16})_[0-9A-Za-z]*|kw_[0-9A-Za-z_]{8,}`)
	schemeShape = regexp.MustCompile(`(?i)\b(bearer|basic)(\s+|%20|\+)([A-Za-z0-9._~+/=%-]{8,})`)
	secretShape = regexp.MustCompile(`(^|[^0-9A-Za-z])[0-9A-Za-z]{43}(?:[0-9A-Za-z]{6})?($|[^0-9A-Za-z])`)
)

// Redact replaces everything shaped like a credential in s: keyward tokens
// (wherever they sit: a header, a query parameter of any name, after a
// ';', in a path), bare secrets, and Bearer or Basic credentials.
func Redact(s string) string {
	if !mayHoldCredential(s) {
		return s
	}
	s = schemeShape.ReplaceAllStringFunc(s, func(m string) string {
		sub := schemeShape.FindStringSubmatch(m)
		if strings.HasPrefix(sub[3], "kw_") {
			return m // a keyward token: it keeps its key ID below
		}
		return sub[1] + sub[2] + "REDACTED"
	})
	s = tokenShape.ReplaceAllStringFunc(s, func(m string) string {
		if sub := tokenShape.FindStringSubmatch(m); sub[1] != "" {
			return "kw_" + sub[1] + "_REDACTED"
		}
		return "kw_REDACTED"
	})
	return secretShape.ReplaceAllString(s, "${1}REDACTED${2}")
}

// mayHoldCredential is true when s has a run of 8 or more letters and
// digits: every credential shape has one, and most log lines do not, so
// they skip the expressions.
func mayHoldCredential(s string) bool {
	run := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' {
			if run++; run >= 8 {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// redacting writes each log line with its credentials redacted. It sits
// under the encoder, so it sees every message, field, error and stack as
// written, whichever library logged it.
type redacting struct{ w io.Writer }

func (r redacting) Write(p []byte) (int, error) {
	if _, err := io.WriteString(r.w, Redact(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// RedactingWriter wraps w so that whatever is written through it has its
// credentials redacted (for the standard library's log, klog's fallback
// and test logs).
func RedactingWriter(w io.Writer) io.Writer { return redacting{w} }
