package policy

import "testing"

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, scope string
		want           bool
	}{
		{"*", "*", true},
		{"*", "a", false},
		{"*", "devices:write", false},
		{"*:write", "devices:write", true},
		{"*:write", "devices:read", false},
		{"*:write", "write", false},
		{"*:write", "a:b:write", false},
		{"devices:*", "devices:read", true},
		{"devices:*", "agents:read", false},
		{"devices:write", "devices:write", true},
		{"*:write", "devices:*", true}, // devices:* grants devices:write
		{"*:write", "*", false},        // full access is restricted by the pattern '*'
		{"billing:*", "*", false},
		{"billing:read", "billing:*", true},
		{"v1.x:read", "v1.x:read", true},
		{"v1.x:read", "v1yx:read", false},
	} {
		if got := Match(tc.pattern, tc.scope); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.scope, got, tc.want)
		}
	}
}
