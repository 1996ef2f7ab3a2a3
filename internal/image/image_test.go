package image_test

import (
	"archive/tar"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"keyward.dev/keyward/internal/image"
	"keyward.dev/keyward/internal/testenv"
)

// makeImage runs `make image` into out and returns the digest it printed.
func makeImage(t *testing.T, out string) string {
	t.Helper()
	cmd := exec.Command("make", "-s", "image", "IMAGE="+out)
	cmd.Dir = testenv.Root()
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, b)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == out && strings.HasPrefix(f[1], "sha256:") {
			return f[1]
		}
	}
	t.Fatalf("make image printed no digest:\n%s", b)
	return ""
}

// untar unpacks the OCI layout tarball into a folder.
func untar(t *testing.T, tarball string) string {
	t.Helper()
	f, err := os.Open(tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			_ = os.MkdirAll(p, 0o755)
			continue
		}
		b, _ := io.ReadAll(tr)
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The image make image writes: the same digest from two builds, one
// manifest per platform, the configuration users rely on, a layer with
// exactly the binary, CA certificates and the nonroot user, and a binary
// that runs and says its version and commit.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keyward for two platforms")
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	da, db := makeImage(t, a), makeImage(t, b)
	if da != db {
		t.Fatalf("two builds, two digests: %s and %s", da, db)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if string(ab) != string(bb) {
		t.Fatal("two builds wrote different tarballs")
	}
	commit, err := exec.Command("git", "-C", testenv.Root(), "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	head := strings.TrimSpace(string(commit))

	p, err := layout.FromPath(untar(t, a))
	if err != nil {
		t.Fatal(err)
	}
	outer, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	om, _ := outer.IndexManifest()
	if len(om.Manifests) != 1 || om.Manifests[0].Digest.String() != da {
		t.Fatalf("the layout's index should name the image index %s: %+v", da, om.Manifests)
	}
	idx, err := outer.ImageIndex(om.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	var archs []string
	for _, d := range im.Manifests {
		archs = append(archs, d.Platform.OS+"/"+d.Platform.Architecture)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cf.Config
		if c.User != fmt.Sprintf("%d:%d", image.User, image.User) || !slices.Equal(c.Entrypoint, []string{"/keyward"}) || len(c.Cmd) != 0 ||
			cf.Architecture != d.Platform.Architecture || cf.OS != "linux" {
			t.Errorf("%s: config %+v", d.Platform.Architecture, c)
		}
		if c.Labels["org.opencontainers.image.revision"] != head || c.Labels["org.opencontainers.image.version"] == "" ||
			c.Labels["org.opencontainers.image.source"] == "" {
			t.Errorf("%s: labels %v", d.Platform.Architecture, c.Labels)
		}
		layers, _ := img.Layers()
		if len(layers) != 1 {
			t.Fatalf("%s: %d layers, want 1", d.Platform.Architecture, len(layers))
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		var bin []byte
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, h.Name)
			if h.Uid != 0 || h.Gid != 0 {
				t.Errorf("%s is not owned by root", h.Name)
			}
			if h.Name == "keyward" {
				bin, _ = io.ReadAll(tr)
			}
			if h.Name == "etc/passwd" {
				pw, _ := io.ReadAll(tr)
				if !strings.Contains(string(pw), "nonroot:x:65532:65532:") {
					t.Errorf("/etc/passwd: %q", pw)
				}
			}
		}
		rc.Close()
		want := []string{"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt",
			"home/", "home/nonroot/", "keyward", "tmp/"}
		if !slices.Equal(names, want) {
			t.Errorf("%s: the layer holds %v, want %v (no shell, nothing else)", d.Platform.Architecture, names, want)
		}
		path := filepath.Join(t.TempDir(), "keyward")
		if err := os.WriteFile(path, bin, 0o755); err != nil {
			t.Fatal(err)
		}
		ef, err := elf.Open(path)
		if err != nil {
			t.Fatalf("%s: the binary is not ELF: %v", d.Platform.Architecture, err)
		}
		machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[d.Platform.Architecture]
		if ef.Machine != machine {
			t.Errorf("%s: a binary for %v", d.Platform.Architecture, ef.Machine)
		}
		ef.Close()
		if d.Platform.Architecture == "amd64" {
			out, err := exec.Command(path, "version").CombinedOutput()
			if err != nil || !strings.Contains(string(out), head) || !strings.Contains(string(out), "go1.") {
				t.Errorf("keyward version from the image: %v %s", err, out)
			}
			t.Logf("%s", out)
		}
	}
	if !slices.Equal(archs, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("platforms %v", archs)
	}
}
