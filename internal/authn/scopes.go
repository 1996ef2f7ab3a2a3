package authn

import "strings"

// Scopes are the scopes a route requires: a list of comma- or
// space-separated strings as they came (query parameters, a header, Envoy
// context extensions), split lazily so the common case allocates nothing.
type Scopes []string

// MaxRequiredScopes is the most scopes one check may require: each is
// matched against every scope of the key, so the work of a check is
// bounded by this times the key's scopes (the CRD bounds those).
const MaxRequiredScopes = 32

// tooMany reports whether r names more than MaxRequiredScopes scopes. It
// stops counting there, so a 32 KiB header of commas costs one scan.
func (r Scopes) tooMany() bool {
	n := 0
	for _, list := range r {
		for list != "" {
			i := strings.IndexAny(list, ", ")
			if i != 0 {
				if n++; n > MaxRequiredScopes {
					return true
				}
			}
			if i < 0 {
				break
			}
			list = list[i+1:]
		}
	}
	return false
}

// missingFrom returns the first required scope the key's scopes do not
// grant.
func (r Scopes) missingFrom(granted []string) (string, bool) {
	for _, list := range r {
		for list != "" {
			var s string
			i := strings.IndexAny(list, ", ")
			if i < 0 {
				s, list = list, ""
			} else {
				s, list = list[:i], list[i+1:]
			}
			if s != "" && !grants(granted, s) {
				return s, false
			}
		}
	}
	return "", true
}

func grants(granted []string, want string) bool {
	for _, g := range granted {
		if Match(g, want) {
			return true
		}
	}
	return false
}

// Match reports whether scope pattern p covers scope s, segment by segment
// (segments split on ':'): '*' alone covers everything (full access); a '*'
// segment covers any one segment (devices:* covers devices:read); anything
// else covers itself.
func Match(p, s string) bool {
	if p == "*" || p == s {
		return true
	}
	for {
		pi, si := strings.IndexByte(p, ':'), strings.IndexByte(s, ':')
		if (pi < 0) != (si < 0) {
			return false
		}
		if pi < 0 {
			return p == "*" || p == s
		}
		if ps := p[:pi]; ps != "*" && ps != s[:si] {
			return false
		}
		p, s = p[pi+1:], s[si+1:]
	}
}
