package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// TestDemoRestartCore runs `hachat demo` as a person would, refuses the
// restarts that make no sense (an unknown part, a running part, a missing
// or stale state file) without changing anything, then kills the primary
// with kill -9 and brings it back with `hachat demo restart core-a`: the
// command exits 0 with core-a running under a new pid in the state file
// (every other field kept), core-a comes back as backup, and core-b, now
// primary, has a backup in sync again.
func TestDemoRestartCore(t *testing.T) {
	dir, state, _, output, _ := startFreeDemo(t, nil)
	before, err := demo.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if before.Control == "" {
		t.Fatalf("the state file names no control socket: %+v", before)
	}
	a, _ := before.Part("core-a")
	b, _ := before.Part("core-b")
	metric := func(part demo.PartState, name string, labels ...string) (float64, error) {
		resp, err := http.Get("http://" + part.HTTP + "/metrics")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		v, ok := harness.SumMetric(string(body), name, labels...)
		if !ok {
			return 0, fmt.Errorf("%s exposes no %s%v", part.Name, name, labels)
		}
		return v, nil
	}
	role := func(part demo.PartState, want string) func() error {
		return func() error {
			v, err := metric(part, "hachat_core_role", `role="`+want+`"`)
			if err != nil {
				return err
			}
			if v != 1 {
				return fmt.Errorf("%s is not %s", part.Name, want)
			}
			return nil
		}
	}
	// inSync is false while no backup is connected: the lag alone reads 0
	// then.
	inSync := func(primary demo.PartState) error {
		in, err := metric(primary, "hachat_core_backup_in_sync")
		if err != nil {
			return err
		}
		lag, err := metric(primary, "hachat_core_replication_lag")
		if err != nil {
			return err
		}
		if in != 1 || lag != 0 {
			return fmt.Errorf("%s: backup in sync %v, replication lag %v", primary.Name, in, lag)
		}
		return nil
	}
	harness.Eventually(t, "core-a primary with core-b in sync", 20*time.Second, func() error {
		if err := role(a, "primary")(); err != nil {
			return err
		}
		return inSync(a)
	})

	restart := func(args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, harness.Binary(t), append([]string{"demo", "restart"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		}
		t.Fatalf("hachat demo restart %v: %v\n%s", args, err, out)
		return "", 0
	}

	// Refusals: a clear message, exit status 1, nothing changed.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(t.TempDir(), "stale.json")
	staleBody, _ := os.ReadFile(state)
	staleBody = []byte(strings.Replace(string(staleBody), fmt.Sprintf(`"supervisor": %d`, before.Supervisor),
		fmt.Sprintf(`"supervisor": %d`, dead.Process.Pid), 1))
	if err := os.WriteFile(stale, staleBody, 0o600); err != nil {
		t.Fatal(err)
	}
	stateBytes, _ := os.ReadFile(state)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown part", []string{"core-z", "--state", state}, []string{`unknown part "core-z"`, "core-a, core-b"}},
		{"running part", []string{"core-b", "--state", state}, []string{"core-b is already running as pid", "nothing done", "--force"}},
		{"missing state file", []string{"core-a", "--state", filepath.Join(dir, "none.json")}, []string{"no state file", "none.json"}},
		{"stale state file", []string{"core-a", "--state", stale}, []string{"stale", "is not running"}},
	} {
		out, code := restart(tc.args...)
		if code != 1 {
			t.Errorf("%s: exit status %d, want 1\n%s", tc.name, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the message lacks %q:\n%s", tc.name, w, out)
			}
		}
	}
	if after, _ := os.ReadFile(state); string(after) != string(stateBytes) {
		t.Errorf("a refused restart changed the state file:\nbefore %s\nafter %s", stateBytes, after)
	}
	if err := syscall.Kill(b.PID, 0); err != nil {
		t.Errorf("core-b (pid %d) died after a refused restart: %v", b.PID, err)
	}

	// kill -9 of the primary: core-b takes over, with no backup.
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "core-b primary", 15*time.Second, role(b, "primary"))
	harness.Eventually(t, "the state file marks core-a exited", 10*time.Second, func() error {
		st, err := demo.ReadState(state)
		if err != nil {
			return err
		}
		if p, _ := st.Part("core-a"); p.State != demo.StateExited {
			return errors.New("core-a: " + p.State)
		}
		return nil
	})
	if err := inSync(b); err == nil {
		t.Fatal("core-b reports a backup in sync while core-a is dead: the wait below would prove nothing")
	}

	out, code := restart("core-a", "--state", state)
	t.Logf("hachat demo restart core-a:\n%s", out)
	if code != 0 || !strings.Contains(out, "core-a running again") {
		t.Fatalf("hachat demo restart core-a: exit status %d\n%s", code, out)
	}
	after, err := demo.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	na, _ := after.Part("core-a")
	if na.PID == a.PID || na.PID <= 0 || na.State != demo.StateRunning || na.Exit != "" {
		t.Fatalf("core-a after the restart: %+v (old pid %d)", na, a.PID)
	}
	if err := syscall.Kill(na.PID, 0); err != nil {
		t.Fatalf("core-a's new pid %d does not run: %v", na.PID, err)
	}
	if !strings.Contains(output(), fmt.Sprintf("ready in")) || !strings.Contains(output(), "restart core-a") {
		t.Errorf("the demo does not tell the restart:\n%s", output())
	}
	// Every other field is kept: the state file is a contract.
	na.PID, na.State, na.Exit = a.PID, a.State, a.Exit
	if na != a {
		t.Errorf("core-a's entry changed beyond pid and state:\nbefore %+v\nafter  %+v", a, na)
	}
	if after.Supervisor != before.Supervisor || after.Control != before.Control ||
		after.Credentials.AdminToken != before.Credentials.AdminToken || len(after.Parts) != len(before.Parts) {
		t.Errorf("the state file changed beyond core-a:\nbefore %+v\nafter  %+v", before, after)
	}
	for _, p := range after.Parts {
		if p.State != demo.StateRunning {
			t.Errorf("%s is %s after the restart", p.Name, p.State)
		}
	}

	harness.Eventually(t, "core-a back as backup", 20*time.Second, role(a, "backup"))
	harness.Eventually(t, "core-b primary with core-a in sync", 20*time.Second, func() error { return inSync(b) })

	// A second restart of the now running core is refused.
	if out, code := restart("core-a", "--state", state); code != 1 || !strings.Contains(out, "already running") {
		t.Errorf("restart of the running core-a: exit status %d\n%s", code, out)
	}
}
