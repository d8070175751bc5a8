package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/demo"
)

// A switchover without a token says the token is missing, before asking
// any core; with the state file's token it goes on to the cores.
func TestCtlSwitchoverMissingAdminToken(t *testing.T) {
	dead, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := func(token string) string {
		p := filepath.Join(dir, token+"state.json")
		b := `{"parts":[{"name":"core-a","kind":"core","grpc":"` + dead + `"}],"credentials":{"adminToken":"` + token + `"}}`
		if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"--core, no token", []string{"ctl", "switchover", "--core", dead, "--timeout", "1s"}, "hachat ctl: missing admin token (--admin-token, or the demo's state file)"},
		{"state file without a token", []string{"ctl", "switchover", "--state", state(""), "--timeout", "1s"}, "missing admin token"},
		{"state file with a token", []string{"ctl", "switchover", "--state", state("tok"), "--timeout", "1s"}, "no primary reachable"},
		{"--admin-token", []string{"ctl", "switchover", "--core", dead, "--admin-token", "tok", "--timeout", "1s"}, "no primary reachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			if code := run(tc.args, &out, &errw); code != 1 {
				t.Fatalf("exit %d, want 1 (stderr %q)", code, errw.String())
			}
			if !strings.Contains(errw.String(), tc.want) {
				t.Fatalf("stderr %q lacks %q", errw.String(), tc.want)
			}
			if !strings.Contains(tc.want, "missing admin token") && strings.Contains(errw.String(), "missing admin token") {
				t.Fatalf("a token was given but ctl says it is missing: %q", errw.String())
			}
		})
	}
}

// ctl status shows a core whose process is gone as dead, with a short
// reason rather than a gRPC error.
func TestCtlStatusShowsDeadCore(t *testing.T) {
	dead, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	var out, errw bytes.Buffer
	if code := run([]string{"ctl", "status", "--core", dead, "--timeout", "2s"}, &out, &errw); code != 0 {
		t.Fatalf("exit %d (stderr %q)", code, errw.String())
	}
	table := out.String()
	if !strings.Contains(table, dead) || !strings.Contains(table, " dead ") || !strings.Contains(table, "connection refused") {
		t.Fatalf("table does not show %s as dead:\n%s", dead, table)
	}
	if strings.Contains(table, "rpc error") || strings.Contains(table, "code =") {
		t.Fatalf("table shows a raw gRPC error:\n%s", table)
	}
}
