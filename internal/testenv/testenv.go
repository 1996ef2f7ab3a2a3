// Package testenv starts the real control plane (envtest with the
// kube-apiserver and etcd that hack/controlplane.sh builds) for tests.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// Root is the repository root: the nearest folder at or above the working
// directory (a test runs in its package's folder) whose go.mod declares
// keyward's module. Not the source file's path: make builds with -trimpath,
// which leaves runtime.Caller a path relative to the module.
func Root() string { return root() }

var root = sync.OnceValue(func() string {
	dir, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module keyward.dev/keyward\n")) {
			return d
		}
		if filepath.Dir(d) == d {
			panic("testenv: no keyward go.mod at or above " + dir)
		}
	}
})

// New returns the environment Start starts, not yet started, for a test
// that configures its control plane first.
func New() (*envtest.Environment, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		assets := filepath.Join(Root(), "bin", "controlplane")
		if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
			return nil, fmt.Errorf("no control plane in %s: run 'make controlplane' (or 'make test')", assets)
		}
		os.Setenv("KUBEBUILDER_ASSETS", assets)
	}
	return &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(Root(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}, nil
}

// Start starts an API server with keyward's CRDs installed. Call Stop on
// the returned environment when done.
func Start() (*envtest.Environment, *rest.Config, error) { return StartFsync(false) }

// StartFsync is Start, with etcd syncing every write to disk when fsync is
// true, as a production etcd does. envtest starts etcd with
// --unsafe-no-fsync: a write is acknowledged before it is on disk, which
// is faster for tests but leaves the disk out of any latency measured.
func StartFsync(fsync bool) (*envtest.Environment, *rest.Config, error) {
	env, err := New()
	if err != nil {
		return nil, nil, err
	}
	if fsync {
		env.ControlPlane.Etcd = &envtest.Etcd{}
		env.ControlPlane.Etcd.Configure().Set("unsafe-no-fsync", "false")
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, fmt.Errorf("start control plane: %w", err)
	}
	return env, cfg, nil
}

// StartWithClient is Start plus a client that knows the built-in kinds and
// keyward's; it exits the test binary when the control plane cannot start.
func StartWithClient() (*envtest.Environment, *rest.Config, client.Client) {
	env, cfg, err := Start()
	if err == nil {
		var c client.Client
		if c, err = client.New(cfg, client.Options{Scheme: scheme()}); err == nil {
			return env, cfg, c
		}
		_ = env.Stop()
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
	return nil, nil, nil
}

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = kw.AddToScheme(s)
	return s
}

// Buffer is a bytes.Buffer safe for concurrent writers (loggers, processes).
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// DocBlock returns the first fenced block of language lang in the section
// of docs/gateways.md whose heading starts with heading: tests run or check
// the documented configurations as written, not copies of them.
func DocBlock(t testing.TB, heading, lang string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(Root(), "docs", "gateways.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## "+heading)
	if !ok {
		t.Fatalf("docs/gateways.md has no section %q", heading)
	}
	if next := strings.Index(section, "\n## "); next >= 0 {
		section = section[:next]
	}
	_, b, ok := strings.Cut(section, "```"+lang+"\n")
	b, _, closed := strings.Cut(b, "```")
	if !ok || !closed {
		t.Fatalf("docs/gateways.md, %s: no %s block", heading, lang)
	}
	return b
}

// ReplaceOnce replaces each pair's first string by its second in s, and
// fails when a first string is not there exactly once (the document
// changed under the test).
func ReplaceOnce(t testing.TB, s string, pairs ...[2]string) string {
	t.Helper()
	for _, r := range pairs {
		if strings.Count(s, r[0]) != 1 {
			t.Fatalf("docs/gateways.md: the block should hold %q once", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	return s
}

// Eventually waits until cond holds, checking every 10 ms, and fails the
// test with what it waited for once within has passed.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
