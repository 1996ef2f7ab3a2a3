// Command release writes the install manifest and the packaged Helm chart
// of a release, both pinned to the image's digest: make release.
package main

import (
	"flag"
	"fmt"
	"os"

	"keyward.dev/keyward/internal/release"
)

func main() {
	var o release.Options
	image := flag.String("image", "bin/keyward-image.tar", "make image's OCI layout tarball; its digest is pinned")
	flag.StringVar(&o.Version, "version", "", "semantic version of the release (e.g. 0.1.0)")
	flag.StringVar(&o.Repository, "repository", "", "where the image is pushed (registry/name)")
	flag.StringVar(&o.Kubectl, "kubectl", "bin/controlplane/kubectl", "kubectl, for kustomize")
	flag.StringVar(&o.Out, "out", "bin/release", "folder to write into")
	flag.StringVar(&o.Root, "root", ".", "the repository")
	flag.Parse()
	digest, err := release.ImageDigest(*image)
	if err != nil {
		fail(err)
	}
	o.Digest = digest
	f, err := release.Write(o)
	if err != nil {
		fail(err)
	}
	fmt.Printf("image    %s@%s (push %s to it)\nmanifest %s\nchart    %s\nsums     %s\n",
		o.Repository, digest, *image, f.Manifest, f.Chart, f.Sums)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "release:", err)
	os.Exit(1)
}
