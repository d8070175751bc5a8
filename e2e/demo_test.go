package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// TestDemoCommand runs `hachat demo` as a person would (on free ports) and
// does the seed's test on it: a customer and an agent chat, the primary is
// killed with kill -9 from the PID in the state file, the customer sends
// again and the agent gets it. The demo reports the death, does not restart
// the part, keeps the rest running, and stops everything on SIGTERM.
func TestDemoCommand(t *testing.T) {
	dir, state, cmd, output, exited := startFreeDemo(t, nil)
	st, err := demo.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ucs", "core-a", "core-b", "xds", "xds-b", "sidecar-webapi", "sidecar-webapi-2", "sidecar-interaction", "sidecar-interaction-2", "webapi", "webapi-2", "interaction", "interaction-2", "edge"}
	for _, name := range want {
		p, ok := st.Part(name)
		if !ok || p.PID <= 0 || p.State != demo.StateRunning || !strings.HasPrefix(p.HTTP, "127.0.0.1:") {
			t.Fatalf("state entry of %s: %+v (ok=%v)", name, p, ok)
		}
		if !strings.Contains(output(), p.HTTP) {
			t.Errorf("the table does not show %s's address %s", name, p.HTTP)
		}
	}
	// Issue 8: two control planes, each listed with its kind.
	for _, name := range []string{"xds", "xds-b"} {
		if p, _ := st.Part(name); p.Kind != demo.KindXDS || p.GRPC == "" {
			t.Errorf("state entry of control plane %s: %+v", name, p)
		}
	}
	for _, name := range []string{"interaction", "interaction-2"} { // two instances, one kind (issue 8)
		if p, _ := st.Part(name); p.Kind != demo.KindInteraction {
			t.Errorf("state entry of %s: kind %q, want %q", name, p.Kind, demo.KindInteraction)
		}
	}
	a, _ := st.Part("core-a")
	if a.Kind != demo.KindCore || a.Role != "primary" || a.GRPC == "" {
		t.Fatalf("core-a entry: %+v", a)
	}
	b, ok := st.Part("core-b")
	if !ok || b.Role != "backup" || b.State != demo.StateRunning {
		t.Fatalf("the demo runs no backup core: %+v", b)
	}

	// The customers' and the agents' one address each: the edge's, printed
	// and in the state file; the instances are behind it.
	edge, _ := st.Part("edge")
	if st.Entrypoints.Customer != "http://"+edge.GRPC || st.Entrypoints.Agent == "" || edge.Kind != demo.KindProxy {
		t.Fatalf("entrypoints %+v, edge %+v: want the edge's addresses", st.Entrypoints, edge)
	}
	if !strings.Contains(output(), "entrypoints: customer "+st.Entrypoints.Customer+" ") {
		t.Errorf("the demo does not print the entrypoints %+v", st.Entrypoints)
	}

	// The seed's test, through the entrypoints: a customer and an agent chat...
	gms := &harness.GMS{Base: st.Entrypoints.Customer, Service: "customer-support", HTTP: http.DefaultClient}
	// The state file holds an agent and a supervisor account with passwords.
	roles := map[string]bool{}
	for _, a := range st.Credentials.Accounts {
		if a.Password == "" {
			t.Fatalf("state file account %s without a password", a.User)
		}
		roles[a.Role] = true
	}
	if !roles["agent"] || !roles["supervisor"] {
		t.Fatalf("state file credentials lack an agent or a supervisor: %+v", st.Credentials.Accounts)
	}
	agents := &harness.AgentAPI{Base: st.Entrypoints.Agent, HTTP: http.DefaultClient, Accounts: st.Credentials.Accounts}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	agent := agents.MustLogin(t, "ada", "agent")
	chat := gms.MustStart(t, "Grace")
	if err := agent.Take(ctx, chat.ChatID); err != nil {
		t.Fatal(err)
	}
	if r, err := chat.Send(ctx, "before the kill", "seed-1"); err != nil || !r.OK() {
		t.Fatalf("send: %v %+v", err, r)
	}
	if _, err := agent.WaitText(ctx, chat.ChatID, "before the kill"); err != nil {
		t.Fatal(err)
	}

	// The seed's move: kill -9 the primary's PID from the state file.
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the demo reports core-a's death", 10*time.Second, func() error {
		if !strings.Contains(output(), "core-a exited: signal: killed") {
			return errors.New("not yet")
		}
		return nil
	})
	harness.Eventually(t, "the state file marks core-a exited", 10*time.Second, func() error {
		st, err := demo.ReadState(state)
		if err != nil {
			return err
		}
		p, _ := st.Part("core-a")
		if p.State != demo.StateExited || p.PID != a.PID {
			return errors.New("core-a: " + p.State)
		}
		return nil
	})
	// ...and the chat simply goes on: send again, the agent gets it.
	r, err := chat.Send(ctx, "after the kill", "seed-2")
	for err == nil && r.Retryable() {
		r, err = chat.Send(ctx, "after the kill", "seed-2")
	}
	if err != nil || !r.OK() {
		t.Fatalf("send after kill -9 of the primary: %v %+v", err, r)
	}
	if _, err := agent.WaitText(ctx, chat.ChatID, "after the kill"); err != nil {
		t.Fatalf("the agent desktop never got the message sent after the failover: %v", err)
	}
	msgs, _, err := chat.Transcript(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if countText(msgs, "before the kill") != 1 || countText(msgs, "after the kill") != 1 {
		t.Fatalf("customer transcript after the failover: %+v", msgs)
	}

	// The state file's credentials let an operator read the transcript at
	// UCS, which refuses a read without them.
	st, _ = demo.ReadState(state)
	if st.Credentials.UCSReaderToken == "" || st.Credentials.AdminToken == "" {
		t.Fatalf("state file credentials = %+v, want adminToken and ucsReaderToken", st.Credentials)
	}
	ucsPart, _ := st.Part("ucs")
	ucsURL, ucsHTTP := "http://"+ucsPart.HTTP, &http.Client{Timeout: 10 * time.Second}
	if ucsPart.TLS { // mTLS: the operator certificate from the state file's cert dir
		tlsc, err := demo.OperatorTLS(st.Credentials.CertDir)
		if err != nil {
			t.Fatal(err)
		}
		ucsURL, ucsHTTP.Transport = "https://"+ucsPart.HTTP, &http.Transport{TLSClientConfig: tlsc}
	}
	ucs := ucsmock.NewClient(ucsURL, ucsHTTP, nil)
	if _, err := ucs.Transcript(ctx, chat.ChatID); !errors.Is(err, ucsmock.ErrForbidden) {
		t.Errorf("UCS transcript without a token: %v, want ErrForbidden", err)
	}
	harness.Eventually(t, "the transcript read at UCS with the state file's reader token", 10*time.Second, func() error {
		tr, err := ucs.WithToken(st.Credentials.UCSReaderToken).Transcript(ctx, chat.ChatID)
		if err != nil {
			return err
		}
		if len(tr.Events) == 0 {
			return errors.New("no events yet")
		}
		return nil
	})
	for _, p := range st.Parts {
		if p.Name == "core-a" {
			continue
		}
		if err := syscall.Kill(p.PID, 0); err != nil || p.State != demo.StateRunning {
			t.Errorf("%s (pid %d, %s) died with the primary: %v", p.Name, p.PID, p.State, err)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer stopCancel()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("demo exit after SIGTERM: %v", err)
		}
	case <-stopCtx.Done():
		t.Fatal("demo did not stop within 20s of SIGTERM")
	}
	for _, p := range st.Parts {
		if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still runs after the demo stopped", p.Name, p.PID)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ucs.db")); err != nil {
		t.Errorf("ucsmock's database is not in the demo dir: %v", err)
	}
}

// startDemo runs `hachat demo --grace 3s` with args as a person would, and
// stops it (SIGTERM) at the end of the test, logging its output and the
// tails of its parts' logs if the test failed. output returns what it has
// printed so far; exited receives its exit status once.
func startDemo(t *testing.T, args ...string) (cmd *exec.Cmd, output func() string, exited <-chan error) {
	t.Helper()
	return startDemoEnv(t, nil, args...)
}

// startDemoEnv is startDemo with env as the demo's environment (nil: the
// test's).
func startDemoEnv(t *testing.T, env []string, args ...string) (cmd *exec.Cmd, output func() string, exited <-chan error) {
	t.Helper()
	cmd = exec.Command(harness.Binary(t), append([]string{"demo", "--grace", "3s"}, args...)...)
	cmd.Env = env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
		}
	}()
	output = func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
	done, gone := make(chan error, 1), make(chan struct{})
	go func() { done <- cmd.Wait(); pw.Close(); close(gone) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-gone:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("demo %v output:\n%s", args, output())
			if st, err := demo.ReadState(demoStatePath(args)); err == nil {
				for _, p := range st.Parts {
					t.Logf("%s log:\n%s", p.Name, demo.Tail(p.Log, 30))
				}
			}
		}
	})
	return cmd, output, done
}

// demoStatePath is the state file a demo started with args writes.
func demoStatePath(args []string) string {
	dir, state := ".hachat", ""
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--dir":
			dir = args[i+1]
		case "--state":
			state = args[i+1]
		}
	}
	if state == "" {
		state = filepath.Join(dir, "demo.json")
	}
	return state
}

// waitDemoReady waits until the demo has printed its table.
// startFreeDemo starts `hachat demo --free-ports` with args in a fresh
// directory (env nil: the test's environment) and waits for its table. The
// free ports are picked before the parts bind them; another process on this
// machine can take one in between, and the part that lost it exits with
// "address already in use". Such a start is made again in a fresh directory
// with new ports (three attempts in all); any other failure fails the test.
func startFreeDemo(t *testing.T, env []string, args ...string) (dir, state string, cmd *exec.Cmd, output func() string, exited <-chan error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		dir = t.TempDir()
		state = filepath.Join(dir, "state.json")
		cmd, output, exited = startDemoEnv(t, env, append([]string{"--free-ports", "--dir", dir, "--state", state}, args...)...)
		err := demoTable(output, exited, 60*time.Second)
		if err == nil {
			return dir, state, cmd, output, exited
		}
		if attempt < 3 && strings.Contains(output(), "address already in use") {
			t.Logf("demo attempt %d: another process took one of its free ports (address already in use); starting again with new ports", attempt)
			continue
		}
		t.Fatalf("demo not ready: %v\n%s", err, output())
	}
}

// demoTable waits until the demo printed its table, it exited, or within
// passed.
func demoTable(output func() string, exited <-chan error, within time.Duration) error {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(output(), "agent desktop:") {
			return nil
		}
		select {
		case err := <-exited:
			return errors.New("demo exited early: " + errString(err))
		case <-deadline.C:
			return fmt.Errorf("no table within %v", within)
		case <-tick.C:
		}
	}
}

func waitDemoReady(t *testing.T, output func() string, exited <-chan error) {
	t.Helper()
	harness.Eventually(t, "the demo's table", 60*time.Second, func() error {
		select {
		case err := <-exited:
			return errors.New("demo exited early: " + errString(err))
		default:
		}
		if !strings.Contains(output(), "agent desktop:") {
			return errors.New("no table yet")
		}
		return nil
	})
}

func errString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// TestDemoCommandRefusesBesideARunningDemo starts a demo on the fixed demo
// ports, then two more beside it: one with the same state file, one in
// another directory on the same ports. Both refuse before starting anything,
// naming the running demo's supervisor and state file, and the first demo
// keeps running with its state file untouched.
func TestDemoCommandRefusesBesideARunningDemo(t *testing.T) {
	if err := demo.CheckFree(filepath.Join(t.TempDir(), "none.json"), demo.DefaultAddrs()); err != nil {
		t.Skipf("the fixed demo ports are not free here: %v", err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "demo.json")
	first, output, exited := startDemo(t, "--dir", dir)
	waitDemoReady(t, output, exited)
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	st, err := demo.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Supervisor != first.Process.Pid {
		t.Fatalf("state file supervisor %d, want %d", st.Supervisor, first.Process.Pid)
	}
	accounts, _ := os.ReadFile(filepath.Join(dir, "accounts.json"))

	wantMsg := []string{"another hachat demo is running", "supervisor pid " + strconv.Itoa(first.Process.Pid), state}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"same state file", []string{"--dir", dir, "--free-ports"}, wantMsg},
		{"same ports", []string{"--dir", t.TempDir()}, append(wantMsg, "it holds 127.0.0.1:")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, harness.Binary(t), append([]string{"demo"}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			t.Logf("second demo:\n%s", out)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("second demo: %v, want exit status 1\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("second demo's message lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "starting") {
				t.Errorf("the second demo started parts:\n%s", out)
			}
		})
	}

	if after, err := os.ReadFile(state); err != nil || string(after) != string(before) {
		t.Errorf("the first demo's state file changed (%v):\nbefore %s\nafter %s", err, before, after)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "accounts.json")); string(after) != string(accounts) {
		t.Errorf("the first demo's accounts file changed")
	}
	for _, p := range st.Parts {
		if err := syscall.Kill(p.PID, 0); err != nil {
			t.Errorf("the first demo's %s (pid %d) died: %v", p.Name, p.PID, err)
		}
	}
	if strings.Contains(output(), "exited") {
		t.Errorf("a part of the first demo exited:\n%s", output())
	}
}
