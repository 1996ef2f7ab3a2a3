// Package image builds keyward's OCI image without a container engine:
// one layer holding the static binary, CA certificates and the passwd and
// group entries of a nonroot user, on no base image, assembled with
// go-containerregistry. The same inputs give the same digest: every file
// in the layer has a fixed time, owner and order, and so do the config and
// the index.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the image's user and group: distroless's nonroot.
const User = 65532

// Options say what goes into the image.
type Options struct {
	// Binaries maps a platform architecture (amd64, arm64) to the static
	// linux binary for it.
	Binaries map[string]string
	// CACertificates is the PEM bundle installed at
	// /etc/ssl/certs/ca-certificates.crt.
	CACertificates string
	// Version, Revision and Source become OCI labels.
	Version, Revision, Source string
	// Created is the time stamped on every file and on the config (the
	// commit's time, so a rebuild gives the same digest).
	Created time.Time
}

// file is one entry of the layer.
type file struct {
	name string
	mode int64
	body []byte
	dir  bool
}

// Build returns the multi-platform image index.
func Build(o Options) (v1.ImageIndex, error) {
	ca, err := os.ReadFile(o.CACertificates)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	archs := make([]string, 0, len(o.Binaries))
	for a := range o.Binaries {
		archs = append(archs, a)
	}
	sort.Strings(archs)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range archs {
		bin, err := os.ReadFile(o.Binaries[arch])
		if err != nil {
			return nil, err
		}
		layer, err := layerOf(o.Created, []file{
			{name: "etc/", mode: 0o755, dir: true},
			{name: "etc/group", mode: 0o644, body: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", User))},
			{name: "etc/passwd", mode: 0o644, body: []byte(fmt.Sprintf(
				"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", User, User))},
			{name: "etc/ssl/", mode: 0o755, dir: true},
			{name: "etc/ssl/certs/", mode: 0o755, dir: true},
			{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, body: ca},
			{name: "home/", mode: 0o755, dir: true},
			{name: "home/nonroot/", mode: 0o700, dir: true},
			{name: "keyward", mode: 0o755, body: bin},
			{name: "tmp/", mode: 0o1777, dir: true},
		})
		if err != nil {
			return nil, err
		}
		img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
		if err != nil {
			return nil, err
		}
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.Architecture, cf.OS = arch, "linux"
		cf.Created = v1.Time{Time: o.Created}
		cf.Config.User = fmt.Sprintf("%d:%d", User, User)
		cf.Config.Entrypoint = []string{"/keyward"}
		cf.Config.WorkingDir = "/home/nonroot"
		cf.Config.Env = []string{"PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
		cf.Config.Labels = map[string]string{
			"org.opencontainers.image.source":   o.Source,
			"org.opencontainers.image.version":  o.Version,
			"org.opencontainers.image.revision": o.Revision,
			"org.opencontainers.image.created":  o.Created.UTC().Format(time.RFC3339),
			"org.opencontainers.image.licenses": "Apache-2.0",
			"org.opencontainers.image.title":    "keyward",
		}
		cf.History = []v1.History{{Created: v1.Time{Time: o.Created}, CreatedBy: "keyward make image", Comment: "keyward, CA certificates, nonroot user"}}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return idx, nil
}

// layerOf writes files into one tar layer, in the given order, owned by
// root, stamped with created.
func layerOf(created time.Time, files []file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: created, Format: tar.FormatPAX,
			Typeflag: tar.TypeReg, Size: int64(len(f.body))}
		if f.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// WriteLayout writes idx as an OCI image layout into a tarball at out
// (what `docker load` and `crane push` take), deterministically, and
// returns the index's digest.
func WriteLayout(idx v1.ImageIndex, out string) (v1.Hash, error) {
	dir, err := os.MkdirTemp("", "keyward-image")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := p.AppendIndex(idx); err != nil {
		return v1.Hash{}, err
	}
	digest, err := idx.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	f, err := os.Create(out)
	if err != nil {
		return v1.Hash{}, err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	var paths []string
	if err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && path != dir {
			paths = append(paths, path)
		}
		return err
	}); err != nil {
		return v1.Hash{}, err
	}
	sort.Strings(paths)
	for _, path := range paths {
		info, err := os.Stat(path)
		if err != nil {
			return v1.Hash{}, err
		}
		rel, _ := filepath.Rel(dir, path)
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatPAX, Typeflag: tar.TypeReg, Size: info.Size()}
		if info.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = h.Name+"/", 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return v1.Hash{}, err
		}
		if !info.IsDir() {
			b, err := os.ReadFile(path)
			if err != nil {
				return v1.Hash{}, err
			}
			if _, err := tw.Write(b); err != nil {
				return v1.Hash{}, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return v1.Hash{}, err
	}
	return digest, f.Close()
}
