// Package buildinfo says which funnel this is: the version and commit that
// the build stamped in with the linker, and the Go release it was built
// with.
//
// The Makefile (and the Dockerfile, which runs the Makefile's build) set
// them:
//
//	go build -ldflags "-X github.com/funnel-proxy/funnel/internal/buildinfo.Version=$(git describe --tags --always --dirty) \
//	                   -X github.com/funnel-proxy/funnel/internal/buildinfo.Commit=$(git rev-parse --short HEAD)"
package buildinfo

import "runtime"

// Version is the release this binary was built from, as git describe
// prints it: a tag such as v0.3.0 when the commit is tagged, else the tag
// plus commits since and the commit ("v0.3.0-4-gdeadbee"), with "-dirty"
// for uncommitted changes. It is "dev" in a build that did not set it.
//
// It is a variable only because the linker's -X flag can set nothing
// else; nothing assigns it at run time.
var Version = "dev"

// Commit is the commit this binary was built from (git rev-parse --short
// HEAD), or "unknown" in a build that did not set it. Like Version, it is
// set by the linker only.
var Commit = "unknown"

// GoVersion returns the Go release the binary was built with, such as
// "go1.26.8".
func GoVersion() string { return runtime.Version() }

// String returns the one line `funnel --version` prints, for example
// "funnel v0.3.0 (commit 1a2b3c4, go1.26.8 linux/amd64)".
func String() string {
	return "funnel " + Version + " (commit " + Commit + ", " + GoVersion() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
}
