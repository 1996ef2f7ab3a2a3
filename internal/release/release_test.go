package release

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"

	"keyward.dev/keyward/internal/image"
	"keyward.dev/keyward/internal/testenv"
	"sigs.k8s.io/yaml"
)

func kubectl(t *testing.T) string {
	p := filepath.Join(testenv.Root(), "bin", "controlplane", "kubectl")
	if a := os.Getenv("KUBEBUILDER_ASSETS"); a != "" {
		p = filepath.Join(a, "kubectl")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no kubectl at %s: run 'make controlplane'", p)
	}
	return p
}

// The manifest and the chart of a release run the image by digest, and
// only that image; the chart carries the release's version.
func TestReleasePinsTheImageByDigest(t *testing.T) {
	digest := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	ref := "registry.example/keyward@" + digest
	f, err := Write(Options{Root: testenv.Root(), Version: "v1.2.3", Repository: "registry.example/keyward",
		Digest: digest, Kubectl: kubectl(t), Out: t.TempDir(), NoPlugin: true})
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile(f.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, "manifest", string(manifest), ref, 2)
	if strings.Contains(string(manifest), ".release-") {
		t.Error("the manifest names the temporary overlay")
	}

	ch, err := loader.Load(f.Chart)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Metadata.Version != "1.2.3" || ch.Metadata.AppVersion != "1.2.3" {
		t.Errorf("chart version %s, app version %s; want 1.2.3", ch.Metadata.Version, ch.Metadata.AppVersion)
	}
	in := action.NewInstall(action.NewConfiguration())
	in.DryRunStrategy, in.Replace, in.ReleaseName, in.Namespace = action.DryRunClient, true, "keyward", "keyward-system"
	in.KubeVersion = &common.KubeVersion{Version: "v1.37.0", Major: "1", Minor: "37"}
	rel, err := in.Run(ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, "chart", rel.(*release.Release).Manifest, ref, 2)
	sums, _ := os.ReadFile(f.Sums)
	for _, p := range []string{f.Manifest, f.Chart} {
		if !strings.Contains(string(sums), filepath.Base(p)) {
			t.Errorf("SHA256SUMS lacks %s:\n%s", filepath.Base(p), sums)
		}
	}
}

func checkImages(t *testing.T, what, manifest, ref string, want int) {
	t.Helper()
	n := 0
	for _, line := range strings.Split(manifest, "\n") {
		if _, img, ok := strings.Cut(line, "image: "); ok {
			n++
			if strings.Trim(img, `"`) != ref {
				t.Errorf("%s runs %s, want %s", what, img, ref)
			}
		}
	}
	if n != want {
		t.Errorf("%s: %d images, want %d", what, n, want)
	}
}

func TestReleaseRefusesWhatItCannotPin(t *testing.T) {
	good := Options{Root: testenv.Root(), Version: "0.1.0", Repository: "registry.example/keyward",
		Digest: "sha256:" + strings.Repeat("a", 64), Kubectl: kubectl(t), Out: t.TempDir(), NoPlugin: true}
	for name, mutate := range map[string]func(*Options){
		"not semver":       func(o *Options) { o.Version = "latest" },
		"a tag, no digest": func(o *Options) { o.Digest = "latest" },
		"tag in the repo":  func(o *Options) { o.Repository = "registry.example/keyward:v1" },
		"digest in repo":   func(o *Options) { o.Repository = "registry.example/keyward@sha256:x" },
	} {
		o := good
		mutate(&o)
		if _, err := Write(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A registry with a port is a repository, not a tag.
	o := good
	o.Repository = "registry.example:5000/team/keyward"
	if _, err := Write(o); err != nil {
		t.Errorf("registry with a port: %v", err)
	}
}

// TestReleasePluginArchive: make release packs kubectl-keyward for krew:
// an archive with the binary and the licence, the same bytes from the
// same source, and a krew manifest naming the archive by this version and
// its sha256. (Built here for this machine's platform only; make release
// builds the four of plugins/keyward.yaml.)
func TestReleasePluginArchive(t *testing.T) {
	host := [2]string{runtime.GOOS, runtime.GOARCH}
	var sums [2]string
	var f Files
	for i := range sums {
		var err error
		f, err = Write(Options{Root: testenv.Root(), Version: "1.2.3", Repository: "registry.example/keyward",
			Digest: "sha256:" + strings.Repeat("b", 64), Kubectl: kubectl(t), Out: t.TempDir(), PluginPlatforms: [][2]string{host}})
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(f.Plugin[0])
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(data)
		sums[i] = hex.EncodeToString(h[:])
	}
	if sums[0] != sums[1] {
		t.Errorf("two builds of the same source differ: %s, %s", sums[0], sums[1])
	}
	name := fmt.Sprintf("kubectl-keyward_v1.2.3_%s_%s.tar.gz", host[0], host[1])
	if filepath.Base(f.Plugin[0]) != name {
		t.Fatalf("archive %s, want %s", f.Plugin[0], name)
	}
	// The archive: the binary, which runs, and the licence.
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xzf", f.Plugin[0], "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "LICENSE")); err != nil {
		t.Error("no LICENSE in the archive")
	}
	out, err := exec.Command(filepath.Join(dir, "kubectl-keyward"), "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "kubectl keyward") {
		t.Fatalf("the archived plugin: %v\n%s", err, out)
	}
	var m struct {
		Kind string
		Spec struct {
			Version   string
			Platforms []struct {
				URI, Sha256, Bin string
				Selector         struct{ MatchLabels map[string]string }
			}
		}
	}
	data, _ := os.ReadFile(f.Krew)
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	p := m.Spec.Platforms
	if m.Kind != "Plugin" || m.Spec.Version != "v1.2.3" || len(p) != 1 || p[0].Sha256 != sums[1] || p[0].Bin != "kubectl-keyward" ||
		!strings.HasSuffix(p[0].URI, "/releases/download/v1.2.3/"+name) || p[0].Selector.MatchLabels["os"] != host[0] {
		t.Errorf("krew manifest:\n%s", data)
	}
	allSums, _ := os.ReadFile(f.Sums)
	if !strings.Contains(string(allSums), sums[1]+"  "+name) || !strings.Contains(string(allSums), "  keyward.yaml") {
		t.Errorf("SHA256SUMS:\n%s", allSums)
	}
}

// ImageDigest reads back the digest make image's layout was written with.
func TestImageDigestOfALayout(t *testing.T) {
	idx, err := random.Index(64, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "image.tar")
	want, err := image.WriteLayout(idx, tarball)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ImageDigest(tarball)
	if err != nil || got != want.String() {
		t.Fatalf("ImageDigest = %s, %v; want %s", got, err, want)
	}
	if _, err := ImageDigest(emptyTar(t)); err == nil {
		t.Error("a tarball without index.json has a digest")
	}
}

func emptyTar(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "empty.tar")
	_ = os.WriteFile(p, make([]byte, 1024), 0o644)
	return p
}
