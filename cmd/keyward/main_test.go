package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func run(args ...string) (string, error) {
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Every mode has --help with its own flags, an example, and
// controller-runtime's zap flags where it logs.
func TestHelpPerMode(t *testing.T) {
	for mode, want := range map[string][]string{
		"controller": {"--endpoint-url", "--leader-elect", "--usage-service", "--kubeconfig", "--zap-log-level", "--zap-encoder", "Examples:"},
		"authn":      {"--http-address", "--grpc-address", "--max-connections", "--tls-client-ca-file", "--zap-log-level", "Examples:"},
		"dev":        {"--assets", "--config", "--zap-log-level", "Examples:"},
		"version":    {"Print the version"},
	} {
		out, err := run(mode, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v", mode, err)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s --help lacks %q:\n%s", mode, w, out)
			}
		}
	}
	out, _ := run("--help")
	for _, mode := range []string{"controller", "authn", "dev", "version"} {
		if !strings.Contains(out, "  "+mode+" ") {
			t.Errorf("keyward --help does not list %s:\n%s", mode, out)
		}
	}
}

// A command line keyward cannot run is a usage error (exit code 2) that says
// what to do; a missing required flag is caught before connecting anywhere.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"authn", "--bogus"},
		{"controller"},
		{"authn", "--max-connections=many"},
		{"version", "extra"},
	} {
		_, err := run(args...)
		if !errors.As(err, new(usageError)) {
			t.Errorf("%v: want a usage error, got %v", args, err)
		}
	}
	if _, err := run("controller"); err == nil || !strings.Contains(err.Error(), "--endpoint-url is required") {
		t.Errorf("controller without --endpoint-url: %v", err)
	}
	if out, err := run("version"); err != nil || !strings.Contains(out, "go1.") {
		t.Errorf("version: %q %v", out, err)
	}
}
