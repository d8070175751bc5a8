package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestDemoRefusesBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"stage out of range", []string{"demo", "--stage", "9"}, 1, "--stage must be 2, 3 or 4"},
		{"log format", []string{"demo", "--log-format", "xml"}, 1, "--log-format must be text or json"},
		{"unknown flag", []string{"demo", "--frobnicate"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"demo", "now"}, 2, `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			if code := run(tt.args, &out, &errw); code != tt.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.code, errw.String())
			}
			if !strings.Contains(errw.String(), tt.want) {
				t.Fatalf("stderr %q lacks %q", errw.String(), tt.want)
			}
			if strings.Contains(out.String(), "starting") {
				t.Fatalf("a refused demo started parts: %q", out.String())
			}
		})
	}
}

func TestDemoHelpListsItsFlags(t *testing.T) {
	var out, errw bytes.Buffer
	if code := run([]string{"demo", "--help"}, &out, &errw); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"--state", "--dir", "--log-format", "--stage", "--free-ports", "--grace"} {
		if !strings.Contains(errw.String(), flag) {
			t.Errorf("help lacks %s:\n%s", flag, errw.String())
		}
	}
}
