package main

import (
	"bytes"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionLine(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/hachat/hachat", Version: "v1.2.3"}}
	withVCS := func(rev, modified string) *debug.BuildInfo {
		b := *bi
		b.Settings = []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
		return &b
	}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"clean tree", withVCS("00cb5411aa", "false"), true, "hachat v1.2.3, commit 00cb5411aa, go1.99.1 " + platform},
		{"modified tree", withVCS("00cb5411aa", "true"), true, "hachat v1.2.3, commit 00cb5411aa (modified), go1.99.1 " + platform},
		{"no vcs", bi, true, "hachat v1.2.3, commit unknown, go1.99.1 " + platform},
		{"no build info", nil, false, "hachat (unknown), commit unknown, " + runtime.Version() + " " + platform},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := versionLine(tc.bi, tc.ok); got != tc.want {
				t.Fatalf("versionLine = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
		var out, errw bytes.Buffer
		if code := run(args, &out, &errw); code != 0 {
			t.Fatalf("hachat %v: exit %d (stderr %q)", args, code, errw.String())
		}
		if got := out.String(); !strings.HasPrefix(got, "hachat ") || !strings.Contains(got, runtime.Version()) ||
			strings.Count(got, "\n") != 1 {
			t.Errorf("hachat %v printed %q, want one line with %s", args, got, runtime.Version())
		}
	}
	var out, errw bytes.Buffer
	if code := run([]string{"version", "now"}, &out, &errw); code != 2 {
		t.Errorf("hachat version now: exit %d, want 2", code)
	}
}
