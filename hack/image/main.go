// Command image writes keyward's OCI image (an OCI layout tarball) from
// static binaries, without a container engine: make image.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"keyward.dev/keyward/internal/image"
)

func main() {
	var o image.Options
	bins := flag.String("bin", "", "comma-separated arch=path of static linux binaries (amd64=bin/linux-amd64/keyward,...)")
	out := flag.String("out", "bin/keyward-image.tar", "the OCI layout tarball to write")
	flag.StringVar(&o.CACertificates, "ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to install")
	flag.StringVar(&o.Version, "version", "dev", "version label")
	flag.StringVar(&o.Revision, "revision", "", "commit label")
	flag.StringVar(&o.Source, "source", "https://github.com/keyward/keyward", "source label")
	created := flag.Int64("created", 0, "creation time, Unix seconds (make image passes the commit's)")
	flag.Parse()
	o.Created = time.Unix(*created, 0).UTC()
	o.Binaries = map[string]string{}
	for _, b := range strings.Split(*bins, ",") {
		arch, path, ok := strings.Cut(b, "=")
		if !ok {
			fail(fmt.Errorf("--bin %q: want arch=path", b))
		}
		o.Binaries[arch] = path
	}
	idx, err := image.Build(o)
	if err != nil {
		fail(err)
	}
	digest, err := image.WriteLayout(idx, *out)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s %s\n", *out, digest)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}
