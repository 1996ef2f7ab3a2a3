package plugin

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kw "keyward.dev/keyward/api/v1alpha1"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "36h": 36 * time.Hour, "1d12h": 36 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "soon", "d", "-1d", "0s", "1x", "3dd"} {
		if _, err := parseDuration(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestChart: one row per hour of the last 24, bars scaled to the busiest,
// allowed then denied; hours older than 24 are left out.
func TestChart(t *testing.T) {
	now := time.Date(2026, 12, 3, 16, 30, 0, 0, time.UTC)
	h := func(ago int, allowed, denied int64) kw.UsageHour {
		return kw.UsageHour{Start: metav1.NewTime(now.Truncate(time.Hour).Add(-time.Duration(ago) * time.Hour)), Allowed: allowed, Denied: denied}
	}
	var b strings.Builder
	chart(&b, &kw.Usage{Hours: []kw.UsageHour{h(30, 5, 0), h(23, 10, 10), h(1, 40, 0), h(0, 20, 0)}}, now)
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 25 {
		t.Fatalf("%d lines:\n%s", len(lines), b.String())
	}
	for i, want := range map[int]string{
		0:  "  17:00  " + strings.Repeat("█", 10) + strings.Repeat("░", 10) + strings.Repeat(" ", 20) + " 10 (+10 denied)",
		1:  "  18:00",
		22: "  15:00  " + strings.Repeat("█", 40) + " 40",
		23: "  16:00  " + strings.Repeat("█", 20) + strings.Repeat(" ", 20) + " 20",
	} {
		if lines[i] != want {
			t.Errorf("line %d: %q, want %q", i, lines[i], want)
		}
	}
	b.Reset()
	chart(&b, nil, now)
	if !strings.Contains(b.String(), "(no calls in the last 24 hours)") {
		t.Errorf("no usage:\n%s", b.String())
	}
}
