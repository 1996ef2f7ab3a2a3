package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// PluginPlatforms are the systems the kubectl plugin is built for, as krew
// names them.
var PluginPlatforms = [][2]string{{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"}}

// writePlugin builds kubectl-keyward for each platform into an archive
// krew installs (the binary and the licence, at fixed times and owners, so
// the same source gives the same bytes), and writes the krew manifest,
// plugins/keyward.yaml with this version's URIs and the archives' sums.
func writePlugin(o Options, version string) (archives []string, manifest string, err error) {
	krew, err := os.ReadFile(filepath.Join(o.Root, "plugins", "keyward.yaml"))
	if err != nil {
		return nil, "", err
	}
	var m map[string]any
	if err := yaml.Unmarshal(krew, &m); err != nil {
		return nil, "", fmt.Errorf("plugins/keyward.yaml: %w", err)
	}
	spec := m["spec"].(map[string]any)
	spec["version"] = version
	licence, err := os.ReadFile(filepath.Join(o.Root, "LICENSE"))
	if err != nil {
		return nil, "", err
	}
	want := o.PluginPlatforms
	if want == nil {
		want = PluginPlatforms
	}
	var kept []any
	for _, p := range want {
		var entry map[string]any
		for _, e := range spec["platforms"].([]any) {
			e := e.(map[string]any)
			labels := e["selector"].(map[string]any)["matchLabels"].(map[string]any)
			if labels["os"] == p[0] && labels["arch"] == p[1] {
				entry = e
			}
		}
		if entry == nil {
			return nil, "", fmt.Errorf("plugins/keyward.yaml lists no platform %s/%s", p[0], p[1])
		}
		name := fmt.Sprintf("kubectl-keyward_%s_%s_%s.tar.gz", version, p[0], p[1])
		out := filepath.Join(o.Out, name)
		if err := buildArchive(o.Root, p[0], p[1], version, licence, out); err != nil {
			return nil, "", err
		}
		data, err := os.ReadFile(out)
		if err != nil {
			return nil, "", err
		}
		sum := sha256.Sum256(data)
		uri := entry["uri"].(string)
		entry["uri"] = uri[:strings.LastIndex(uri, "/releases/download/")] + "/releases/download/" + version + "/" + name
		entry["sha256"] = hex.EncodeToString(sum[:])
		kept = append(kept, entry)
		archives = append(archives, out)
	}
	spec["platforms"] = kept
	data, err := yaml.Marshal(m)
	if err != nil {
		return nil, "", err
	}
	manifest = filepath.Join(o.Out, "keyward.yaml")
	return archives, manifest, os.WriteFile(manifest, data, 0o644)
}

// buildArchive cross-builds the plugin and packs it with the licence.
func buildArchive(root, goos, goarch, version string, licence []byte, out string) error {
	tmp, err := os.MkdirTemp("", "kubectl-keyward-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "kubectl-keyward")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X keyward.dev/keyward/internal/version.Version="+version,
		"-o", bin, "./cmd/kubectl-keyward")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build kubectl-keyward for %s/%s: %w\n%s", goos, goarch, err, b)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(gz)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"kubectl-keyward", 0o755, exe}, {"LICENSE", 0o644, licence}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0),
			Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}
