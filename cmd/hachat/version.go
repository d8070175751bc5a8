package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// versionLine says which hachat this is: the module version, the commit it
// was built from (with "modified" when the tree had uncommitted changes), and
// the Go toolchain and platform, all from the build information the Go
// linker stamps into the binary. A build without VCS information (go test,
// -buildvcs=false, a tree outside git) says "commit unknown".
func versionLine(bi *debug.BuildInfo, ok bool) string {
	version, commit, modified, goVersion := "(unknown)", "", false, runtime.Version()
	if ok && bi != nil {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	c := "commit unknown"
	if commit != "" {
		c = "commit " + commit
		if modified {
			c += " (modified)"
		}
	}
	return fmt.Sprintf("hachat %s, %s, %s %s/%s", version, c, goVersion, runtime.GOOS, runtime.GOARCH)
}

// runVersion prints versionLine of the running binary.
func runVersion(_ context.Context, args []string, out, errw io.Writer) error {
	if len(args) > 0 {
		fmt.Fprintf(errw, "hachat version: unexpected argument %q\n", args[0])
		return errUsage
	}
	bi, ok := debug.ReadBuildInfo()
	fmt.Fprintln(out, versionLine(bi, ok))
	return nil
}
