// Package release writes what make release publishes: the install manifest
// (config/default, the image pinned by digest) and the packaged Helm chart
// (charts/keyward, the same image, the release's version).
package release

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"sigs.k8s.io/yaml"
)

// Options say what to release.
type Options struct {
	// Root is the repository (config/, charts/).
	Root string
	// Version is the release's semantic version (a leading v is allowed).
	Version string
	// Repository is where the image is pushed (registry/name).
	Repository string
	// Digest is the image index's digest (sha256:...), e.g. ImageDigest of
	// make image's tarball.
	Digest string
	// Kubectl runs kustomize.
	Kubectl string
	// Out receives keyward-<version>.yaml, keyward-<version>.tgz, the
	// kubectl plugin's archives and its krew manifest (keyward.yaml), and
	// SHA256SUMS.
	Out string
	// NoPlugin leaves the plugin's archives and krew manifest out (tests
	// of the rest, which need no four cross-builds).
	NoPlugin bool
	// PluginPlatforms are the os/arch pairs the plugin is built for
	// (default: PluginPlatforms, all of plugins/keyward.yaml's).
	PluginPlatforms [][2]string
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Files are what Write wrote.
type Files struct {
	Manifest, Chart, Sums string
	// Plugin are the plugin's archives, Krew its krew manifest.
	Plugin []string
	Krew   string
}

// Write writes the install manifest and the packaged chart.
func Write(o Options) (Files, error) {
	v, err := semver.StrictNewVersion(strings.TrimPrefix(o.Version, "v"))
	if err != nil {
		return Files{}, fmt.Errorf("version %q is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD]): %w", o.Version, err)
	}
	if !digestRE.MatchString(o.Digest) {
		return Files{}, fmt.Errorf("image digest %q: want sha256: and 64 hex digits", o.Digest)
	}
	last := o.Repository[strings.LastIndex(o.Repository, "/")+1:]
	if o.Repository == "" || strings.ContainsAny(o.Repository, "@ \t") || strings.Contains(last, ":") {
		return Files{}, fmt.Errorf("image repository %q: want registry/name without tag or digest", o.Repository)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return Files{}, err
	}
	f := Files{
		Manifest: filepath.Join(o.Out, "keyward-"+v.String()+".yaml"),
		Chart:    filepath.Join(o.Out, "keyward-"+v.String()+".tgz"),
		Sums:     filepath.Join(o.Out, "SHA256SUMS"),
	}
	if err := writeManifest(o, f.Manifest); err != nil {
		return Files{}, err
	}
	if err := writeChart(o, v.String(), f.Chart); err != nil {
		return Files{}, err
	}
	published := []string{f.Manifest, f.Chart}
	if !o.NoPlugin {
		if f.Plugin, f.Krew, err = writePlugin(o, "v"+v.String()); err != nil {
			return Files{}, err
		}
		published = append(published, f.Plugin...)
		published = append(published, f.Krew)
	}
	var sums strings.Builder
	for _, p := range published {
		data, err := os.ReadFile(p)
		if err != nil {
			return Files{}, err
		}
		h := sha256.Sum256(data)
		fmt.Fprintf(&sums, "%s  %s\n", hex.EncodeToString(h[:]), filepath.Base(p))
	}
	return f, os.WriteFile(f.Sums, []byte(sums.String()), 0o644)
}

// writeManifest is kustomize build of an overlay on config/default that
// sets the image, as a user's own overlay would.
func writeManifest(o Options, out string) error {
	overlay, err := os.MkdirTemp(filepath.Join(o.Root, "config"), ".release-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(overlay)
	k := map[string]any{
		"resources": []string{"../default"},
		"images":    []map[string]string{{"name": "keyward", "newName": o.Repository, "digest": o.Digest}},
	}
	data, _ := yaml.Marshal(k)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), data, 0o644); err != nil {
		return err
	}
	cmd := exec.Command(o.Kubectl, "kustomize", overlay)
	cmd.Stderr = os.Stderr
	manifest, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("kubectl kustomize: %w", err)
	}
	header := fmt.Sprintf("# keyward %s: kubectl apply -f %s (image %s@%s)\n", o.Version, filepath.Base(out), o.Repository, o.Digest)
	return os.WriteFile(out, append([]byte(header), manifest...), 0o644)
}

// writeChart packages charts/keyward with the release's version and the
// image pinned by digest in its values.yaml (comments kept).
func writeChart(o Options, version, out string) error {
	ch, err := loader.Load(filepath.Join(o.Root, "charts", "keyward"))
	if err != nil {
		return err
	}
	ch.Metadata.Version, ch.Metadata.AppVersion = version, version
	for _, f := range ch.Raw {
		if f.Name != chartutil.ValuesfileName {
			continue
		}
		text := string(f.Data)
		for _, r := range [][2]string{
			{"\n  repository: keyward\n", "\n  repository: " + o.Repository + "\n"},
			{"\n  digest: \"\"\n", "\n  digest: \"" + o.Digest + "\"\n"},
		} {
			if strings.Count(text, r[0]) != 1 {
				return fmt.Errorf("charts/keyward/values.yaml: want %q once", strings.TrimSpace(r[0]))
			}
			text = strings.Replace(text, r[0], r[1], 1)
		}
		f.Data = []byte(text)
		if err := yaml.Unmarshal(f.Data, &ch.Values); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "keyward-chart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	saved, err := chartutil.Save(ch, dir)
	if err != nil {
		return err
	}
	return moveFile(saved, out)
}

func moveFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o644)
}

// ImageDigest is the digest of the image index in an OCI layout tarball
// (make image's bin/keyward-image.tar): what a registry serves it by.
func ImageDigest(tarball string) (string, error) {
	f, err := os.Open(tarball)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: no index.json (not an OCI layout)", tarball)
		}
		if err != nil {
			return "", err
		}
		if strings.TrimPrefix(h.Name, "./") != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Digest string `json:"digest"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&idx); err != nil {
			return "", fmt.Errorf("%s: index.json: %w", tarball, err)
		}
		if len(idx.Manifests) != 1 {
			return "", fmt.Errorf("%s: index.json lists %d images, want 1", tarball, len(idx.Manifests))
		}
		return idx.Manifests[0].Digest, nil
	}
}
