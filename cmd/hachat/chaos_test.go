package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChaosRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown fault", []string{"chaos", "--faults", "kill,meteor", "--out", out}, 2, `unknown fault "meteor"`},
		{"no fault", []string{"chaos", "--faults", ",", "--out", out}, 2, "no fault named"},
		{"no end", []string{"chaos", "--duration", "0", "--out", out}, 2, "give --duration or --count"},
		{"missing state file", []string{"chaos", "--state", filepath.Join(dir, "none.json"), "--out", out}, 1, "read state"},
		{"unknown flag", []string{"chaos", "--frobnicate"}, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, errw bytes.Buffer
			if code := run(tt.args, &stdout, &errw); code != tt.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.code, errw.String())
			}
			if !strings.Contains(errw.String(), tt.want) {
				t.Fatalf("stderr %q lacks %q", errw.String(), tt.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("a refused run made %s (%v)", out, err)
			}
		})
	}
}

func TestChaosHelpListsItsFlags(t *testing.T) {
	var out, errw bytes.Buffer
	if code := run([]string{"chaos", "--help"}, &out, &errw); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"--state", "--duration", "--faults", "--count", "--seed", "--concurrency", "--out", "--json", "--targets"} {
		if !strings.Contains(errw.String(), flag) {
			t.Errorf("help lacks %s:\n%s", flag, errw.String())
		}
	}
}
