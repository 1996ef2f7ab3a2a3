// Package version says which keyward this is. Version and Commit are set
// at build time (make build, make image):
//
//	-ldflags "-X keyward.dev/keyward/internal/version.Version=v0.3.0 -X keyward.dev/keyward/internal/version.Commit=<sha>"
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker.
var (
	Version = "dev"
	Commit  = ""
)

// String is what `keyward version` prints: version, commit and the Go
// that built it. Without a commit from the linker, the one Go recorded
// from the checkout is used.
func String() string {
	commit := Commit
	if commit == "" {
		commit = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					commit = s.Value
				}
			}
		}
	}
	return fmt.Sprintf("keyward %s (commit %s, %s, %s/%s)", Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
