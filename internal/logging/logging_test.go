package logging

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"keyward.dev/keyward/internal/keys"
)

// The zap flags are controller-runtime's; whatever they ask, no line above
// MaxVerbosity is written and every line is redacted, in either encoding.
func TestFlagsKeepTheCapAndRedaction(t *testing.T) {
	k, _ := keys.Generate()
	for _, args := range [][]string{
		{"--zap-log-level=10"},
		{"--zap-log-level=10", "--zap-encoder=console"},
		{"--zap-devel", "--zap-log-level=9"},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		o := BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(args, err)
		}
		var buf bytes.Buffer
		log := FromOptions(o, &buf)
		log.V(MaxVerbosity).Info("at the cap", "token", k.Token())
		log.V(MaxVerbosity + 1).Info("above the cap")
		out := buf.String()
		if !strings.Contains(out, "at the cap") || strings.Contains(out, "above the cap") {
			t.Errorf("%v: want the line at %d and not the one above it:\n%s", args, MaxVerbosity, out)
		}
		if strings.Contains(out, k.Secret) {
			t.Errorf("%v: the secret was written:\n%s", args, out)
		}
	}
	// The default is info: nothing at V(1).
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o := BindFlags(fs)
	_ = fs.Parse(nil)
	var buf bytes.Buffer
	log := FromOptions(o, &buf)
	log.V(1).Info("debug")
	log.Info("info")
	if strings.Contains(buf.String(), "debug") || !strings.Contains(buf.String(), `"msg":"info"`) {
		t.Errorf("default level is not info in JSON:\n%s", buf.String())
	}
}
