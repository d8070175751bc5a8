package main

import (
	"bytes"
	"flag"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A wrong flag or argument prints the error and a one-line hint, not the
// whole help.
func TestBadFlagPrintsHintNotHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "--frobnicate"}, "hachat demo: flag provided but not defined: --frobnicate"},
		{[]string{"demo", "--stage", "x"}, `hachat demo: invalid value "x" for flag --stage`},
		{[]string{"demo", "now"}, `hachat demo: unexpected argument "now"`},
		{[]string{"ctl", "status", "--nope"}, "hachat ctl status: flag provided but not defined: --nope"},
		{[]string{"xds", "grpc-bootstrap", "--bogus"}, "hachat xds grpc-bootstrap: flag provided but not defined: --bogus"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errw bytes.Buffer
			if code := run(tc.args, &out, &errw); code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, errw.String())
			}
			lines := strings.Split(strings.TrimSuffix(errw.String(), "\n"), "\n")
			name := "hachat " + strings.Join(tc.args[:len(tc.args)-1], " ")
			if tc.args[0] == "demo" {
				name = "hachat demo"
			}
			hint := "run '" + name + " --help' for the flags"
			if len(lines) != 2 || !strings.HasPrefix(lines[0], tc.want) || lines[1] != hint {
				t.Fatalf("stderr:\n%s\nwant two lines: %q... and %q", errw.String(), tc.want, hint)
			}
		})
	}
}

// --help prints every flag, spelled with two dashes as the docs do.
func TestHelpSpellsFlagsWithTwoDashes(t *testing.T) {
	oneDash := regexp.MustCompile(`(?m)^\s+-[a-z]`)
	for _, args := range [][]string{{"demo", "--help"}, {"core", "--help"}, {"ctl", "status", "--help"}, {"xds", "envoy-bootstrap", "-h"}} {
		var out, errw bytes.Buffer
		if code := run(args, &out, &errw); code != 0 {
			t.Fatalf("hachat %v: exit %d", args, code)
		}
		help := errw.String()
		if !strings.Contains(help, "Flags:\n  --") {
			t.Errorf("hachat %v: no flags listed:\n%s", args, help)
		}
		if m := oneDash.FindString(help); m != "" {
			t.Errorf("hachat %v spells a flag with one dash (%q):\n%s", args, m, help)
		}
	}
}

func TestPrintFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("dir", ".hachat", "state `directory`")
	fs.String("state", "", "state file")
	fs.Bool("free-ports", false, "use free ports")
	fs.Duration("grace", 5*time.Second, "grace period")
	fs.Int("stage", 0, "stage")
	var b strings.Builder
	printFlags(&b, fs)
	want := "  --dir directory\n    \tstate directory (default \".hachat\")\n" +
		"  --free-ports\n    \tuse free ports\n" +
		"  --grace duration\n    \tgrace period (default 5s)\n" +
		"  --stage int\n    \tstage\n" +
		"  --state string\n    \tstate file\n"
	if b.String() != want {
		t.Fatalf("printFlags:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestFlagsFromEnvironment: HACHAT_<FLAG> sets a flag, the command line
// overrides it, and a bad value names the variable.
func TestFlagsFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		want    string
		wantErr string
	}{
		{"from the environment", map[string]string{"HACHAT_ADMIN_TOKEN": "from-env"}, nil, "from-env", ""},
		{"the flag wins", map[string]string{"HACHAT_ADMIN_TOKEN": "from-env"}, []string{"--admin-token=from-flag"}, "from-flag", ""},
		{"unset", nil, nil, "default", ""},
		{"bad value", map[string]string{"HACHAT_TIMEOUT": "soon"}, nil, "", "HACHAT_TIMEOUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var opts struct {
				AdminToken string
				Timeout    time.Duration
			}
			opts.AdminToken = "default"
			err := parseFlags("test", "a test", tc.args, io.Discard, &opts, func(fs *flag.FlagSet) {
				fs.StringVar(&opts.AdminToken, "admin-token", opts.AdminToken, "token")
				fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "timeout")
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || opts.AdminToken != tc.want {
				t.Fatalf("admin token %q (err %v), want %q", opts.AdminToken, err, tc.want)
			}
		})
	}
}
