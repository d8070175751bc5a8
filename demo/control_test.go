package demo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// TestRequestRestart drives the control socket as `hachat demo restart`
// does, against a supervisor of real (fake) parts: every refusal says why
// and changes nothing; a killed part comes back with a new pid in the
// state file; --force restarts a running part.
func TestRequestRestart(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "demo.json")
	progress := &telemetrytest.LogBuffer{}
	sup, err := Start(t.Context(), fakePlan(t, "core-a", "webapi"), Options{Binary: exe, Dir: dir, StatePath: state,
		Progress: progress, Env: []string{"HACHAT_DEMO_FAKE=1"}, ReadyTimeout: 10 * time.Second, Grace: 2 * time.Second,
		Control: ControlPath(state)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sup.Stop)
	before, err := ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if before.Control != filepath.Join(dir, "demo.sock") {
		t.Fatalf("state control = %q", before.Control)
	}
	if fi, err := os.Stat(before.Control); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v, want mode 0600", fi, err)
	}
	stale := filepath.Join(dir, "stale.json")
	if err := os.WriteFile(stale, []byte(`{"supervisor": 999999999, "parts": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	for _, tc := range []struct {
		name, state, part string
		is                error
		msg               string
	}{
		{"unknown part", state, "core-z", ErrUnknownPart, `unknown part "core-z"`},
		{"running part", state, "webapi", ErrAlreadyRunning, "webapi is already running as pid"},
		{"missing state file", filepath.Join(dir, "none.json"), "core-a", ErrNoDemo, "no state file"},
		{"stale state file", stale, "core-a", ErrNoDemo, "stale"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RequestRestart(ctx, tc.state, tc.part, RestartOptions{})
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v with %q", err, tc.is, tc.msg)
			}
		})
	}
	// Asked of the supervisor itself (past the client's own checks).
	if _, err := sup.RestartPart(ctx, "core-z", RestartOptions{}); !errors.Is(err, ErrUnknownPart) {
		t.Errorf("RestartPart(core-z) = %v", err)
	}
	if after, _ := ReadState(state); after.Parts[0].PID != before.Parts[0].PID || after.Parts[1].PID != before.Parts[1].PID {
		t.Fatalf("a refused restart changed the parts: %+v -> %+v", before.Parts, after.Parts)
	}

	a := before.Parts[0]
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := sup.WaitExit(ctx, "core-a"); err != nil {
		t.Fatal(err)
	}
	// The death is told with the command that undoes it.
	hint := "core-a exited: signal: killed; bring it back: hachat demo restart core-a --state " + state + "\n"
	waitFor(t, "the exit line with its restart hint", 5*time.Second, func() bool { return strings.Contains(progress.String(), hint) })
	res, err := RequestRestart(ctx, state, "core-a", RestartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.OldPID != a.PID || res.OldState != StateExited || res.Part.PID == a.PID || res.Part.State != StateRunning {
		t.Fatalf("restart result %+v (old pid %d)", res, a.PID)
	}
	after, _ := ReadState(state)
	if p, _ := after.Part("core-a"); p.PID != res.Part.PID || p.State != StateRunning {
		t.Fatalf("state file after restart: %+v", p)
	}

	w := before.Parts[1]
	res, err = RequestRestart(ctx, state, "webapi", RestartOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.OldPID != w.PID || res.Part.PID == w.PID || !sup.Running("webapi") {
		t.Fatalf("forced restart %+v (old pid %d)", res, w.PID)
	}
	if err := syscall.Kill(w.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the old webapi (pid %d) still runs after a forced restart", w.PID)
	}

	sup.Stop()
	if _, err := os.Stat(before.Control); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left after Stop: %v", err)
	}
}

func TestControlPath(t *testing.T) {
	for in, want := range map[string]string{
		".hachat/demo.json": ".hachat/demo.sock",
		"/tmp/x/state":      "/tmp/x/state.sock",
		"a.b/c.json":        "a.b/c.sock",
	} {
		if got := ControlPath(in); got != want {
			t.Errorf("ControlPath(%q) = %q, want %q", in, got, want)
		}
	}
}
