package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// TestMain lets the test binary play a hachat part: with HACHAT_DEMO_FAKE=1
// it runs fakePart instead of the tests, so the supervisor is tested with
// real child processes.
func TestMain(m *testing.M) {
	if os.Getenv("HACHAT_DEMO_FAKE") == "1" {
		os.Exit(fakePart(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakePart serves /healthz on --http=ADDR. Flags: --fail (exit 3 at once),
// --ignore-term (survive SIGTERM), --slow=DUR (ready after DUR).
func fakePart(args []string) int {
	var addr string
	var ignoreTerm bool
	var slow time.Duration
	for _, a := range args[1:] {
		switch {
		case strings.HasPrefix(a, "--http="):
			addr = strings.TrimPrefix(a, "--http=")
		case a == "--fail":
			fmt.Fprintln(os.Stderr, "fake part: failing on purpose")
			return 3
		case a == "--ignore-term":
			ignoreTerm = true
		case strings.HasPrefix(a, "--slow="):
			slow, _ = time.ParseDuration(strings.TrimPrefix(a, "--slow="))
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	start := time.Now()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake part:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "fake part listening on", addr)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Since(start) < slow {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}))
	for range sigs {
		fmt.Fprintln(os.Stderr, "fake part: got SIGTERM")
		if !ignoreTerm {
			return 0
		}
	}
	return 0
}

func fakePlan(t *testing.T, names ...string) Plan {
	t.Helper()
	var p Plan
	for _, n := range names {
		addr, err := FreePort(false)
		if err != nil {
			t.Fatal(err)
		}
		p.Parts = append(p.Parts, Part{Name: n, Kind: KindCore, Role: "primary", HTTP: addr, Args: []string{"--http=" + addr}})
	}
	return p
}

func startFake(t *testing.T, plan Plan, grace time.Duration) (*Supervisor, *telemetrytest.LogBuffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	progress := &telemetrytest.LogBuffer{}
	dir := t.TempDir()
	sup, err := Start(t.Context(), plan, Options{Binary: exe, Dir: dir, Progress: progress,
		Env: []string{"HACHAT_DEMO_FAKE=1"}, ReadyTimeout: 10 * time.Second, Grace: grace})
	if err != nil {
		t.Fatalf("Start: %v\nprogress:\n%s", err, progress)
	}
	t.Cleanup(sup.Stop)
	return sup, progress
}

// waitFor polls cond every 10ms until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSupervisorStartsWritesStateAndNeverRestartsAKilledPart(t *testing.T) {
	sup, progress := startFake(t, fakePlan(t, "core-a", "webapi"), 2*time.Second)
	st, err := ReadState(sup.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Parts) != 2 || st.Parts[0].Name != "core-a" || st.Parts[1].Name != "webapi" {
		t.Fatalf("state parts = %+v", st.Parts)
	}
	for _, p := range st.Parts {
		if p.PID <= 0 || p.State != StateRunning || p.HTTP == "" || p.Kind != KindCore {
			t.Fatalf("bad state entry %+v", p)
		}
	}
	if !strings.Contains(progress.String(), "starting core-a") || !strings.Contains(progress.String(), "ready in") {
		t.Fatalf("progress lacks the start story:\n%s", progress)
	}
	var table bytes.Buffer
	sup.WriteTable(&table)
	if !strings.Contains(table.String(), fmt.Sprint(st.Parts[0].PID)) || !strings.Contains(table.String(), "http://"+st.Parts[0].HTTP+"/") {
		t.Fatalf("table lacks pid or url:\n%s", table.String())
	}

	// kill -9 from outside, as a person would with the PID from the state file.
	if err := syscall.Kill(st.Parts[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := sup.WaitExit(t.Context(), "core-a"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "state file marks core-a exited", 5*time.Second, func() bool {
		st, err := ReadState(sup.StatePath())
		if err != nil {
			return false
		}
		a, _ := st.Part("core-a")
		return a.State == StateExited && a.Exit == "signal: killed"
	})
	if !strings.Contains(progress.String(), "core-a exited: signal: killed\n") {
		t.Fatalf("progress lacks the exit notice (without a control socket, no restart hint):\n%s", progress)
	}
	// Not restarted, and the other part keeps running.
	time.Sleep(100 * time.Millisecond) // give a (wrong) restart the chance to happen
	if sup.Running("core-a") {
		t.Fatal("core-a was restarted")
	}
	if !sup.Running("webapi") {
		t.Fatal("webapi stopped when core-a died")
	}
	b, _ := st.Part("webapi")
	if err := probeHTTP(t.Context(), http.DefaultClient, "http://"+b.HTTP+"/healthz"); err != nil {
		t.Fatalf("webapi not serving: %v", err)
	}

	// Restart brings it back with a new pid.
	if err := sup.Restart(t.Context(), "core-a"); err != nil {
		t.Fatal(err)
	}
	pid, _ := sup.PID("core-a")
	if pid == st.Parts[0].PID || !sup.Running("core-a") {
		t.Fatalf("restart: pid %d (old %d), running %v", pid, st.Parts[0].PID, sup.Running("core-a"))
	}
	if tail := Tail(sup.LogPath("core-a"), 100); strings.Count(tail, "=== hachat demo: starting core-a") != 2 {
		t.Fatalf("log should hold both runs:\n%s", tail)
	}

	sup.Stop()
	st, err = ReadState(sup.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Parts {
		if p.State != StateStopped {
			t.Fatalf("after Stop: %+v", p)
		}
		if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("pid %d of %s still exists after Stop (kill 0: %v)", p.PID, p.Name, err)
		}
	}
}

func TestSupervisorKillsAPartThatIgnoresSIGTERMAfterGrace(t *testing.T) {
	plan := fakePlan(t, "stubborn").With("stubborn", "--ignore-term")
	sup, _ := startFake(t, plan, 300*time.Millisecond)
	pid, _ := sup.PID("stubborn")
	begin := time.Now()
	sup.Stop()
	took := time.Since(begin)
	if took < 250*time.Millisecond {
		t.Fatalf("stop took %s: grace not honoured", took)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("stubborn part %d survives Stop", pid)
	}
	if tail := Tail(sup.LogPath("stubborn"), 10); !strings.Contains(tail, "got SIGTERM") {
		t.Fatalf("part never saw SIGTERM:\n%s", tail)
	}
}

func TestSupervisorSignalStopCont(t *testing.T) {
	sup, _ := startFake(t, fakePlan(t, "core-a"), time.Second)
	part, _ := sup.Plan().Part("core-a")
	if err := sup.Signal("core-a", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// kill(2) returns before the target is actually stopped: wait for the
	// kernel to report it in state T.
	pid, _ := sup.PID("core-a")
	waitFor(t, "core-a stopped (state T)", 5*time.Second, func() bool { return procState(pid) == "T" })
	client := &http.Client{Timeout: 200 * time.Millisecond}
	if err := probeHTTP(t.Context(), client, part.URL()+"/healthz"); err == nil {
		t.Fatal("a stopped process answered")
	}
	if err := sup.Signal("core-a", syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "core-a answers after SIGCONT", 5*time.Second, func() bool {
		return probeHTTP(t.Context(), client, part.URL()+"/healthz") == nil
	})
	if err := sup.Signal("nope", syscall.SIGCONT); !errors.Is(err, ErrUnknownPart) {
		t.Fatalf("unknown part: %v", err)
	}
}

// procState returns the one-letter state of pid from /proc/<pid>/stat.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

func TestStartFailsWithLogTailAndStopsTheOthers(t *testing.T) {
	exe, _ := os.Executable()
	plan := fakePlan(t, "ok", "broken").With("broken", "--fail")
	dir := t.TempDir()
	_, err := Start(t.Context(), plan, Options{Binary: exe, Dir: dir, Env: []string{"HACHAT_DEMO_FAKE=1"},
		ReadyTimeout: 5 * time.Second, Grace: time.Second})
	if err == nil {
		t.Fatal("Start succeeded with a broken part")
	}
	if !strings.Contains(err.Error(), "failing on purpose") || !strings.Contains(err.Error(), "exited before ready") {
		t.Fatalf("error lacks the story: %v", err)
	}
	st, rerr := ReadState(filepath.Join(dir, "demo.json"))
	if rerr != nil {
		t.Fatal(rerr)
	}
	ok, _ := st.Part("ok")
	if err := syscall.Kill(ok.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the healthy part %d was left running", ok.PID)
	}
}

func TestStartTimesOutOnAPartThatNeverGetsReady(t *testing.T) {
	exe, _ := os.Executable()
	plan := fakePlan(t, "slow").With("slow", "--slow=1h")
	_, err := Start(t.Context(), plan, Options{Binary: exe, Dir: t.TempDir(), Env: []string{"HACHAT_DEMO_FAKE=1"},
		ReadyTimeout: 300 * time.Millisecond, Grace: time.Second})
	if err == nil || !strings.Contains(err.Error(), "not ready within") {
		t.Fatalf("want a readiness timeout, got %v", err)
	}
}

func TestCancellingTheContextStopsEveryPart(t *testing.T) {
	exe, _ := os.Executable()
	ctx, cancel := context.WithCancel(t.Context())
	sup, err := Start(ctx, fakePlan(t, "a", "b"), Options{Binary: exe, Dir: t.TempDir(),
		Env: []string{"HACHAT_DEMO_FAKE=1"}, Grace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for _, name := range []string{"a", "b"} {
		wctx, wcancel := context.WithTimeout(t.Context(), 5*time.Second)
		if err := sup.WaitExit(wctx, name); err != nil {
			t.Fatal(err)
		}
		wcancel()
	}
	sup.Stop()
	for _, p := range sup.Status() {
		if p.State != StateStopped {
			t.Fatalf("%s: %s", p.Name, p.State)
		}
	}
}

// TestStateFileCredentials: the state file carries Options.Credentials
// under "credentials" with the four keys of the contract, and is readable by
// its owner only.
func TestStateFileCredentials(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	creds := Credentials{
		Accounts: []AccountCredential{{User: "alice", Password: "pw1", Role: "agent"},
			{User: "sam", Password: "pw2", Role: "supervisor"}},
		AdminToken:     "adm",
		UCSReaderToken: "rd",
		CertDir:        "/certs",
	}
	sup, err := Start(t.Context(), fakePlan(t, "core-a"), Options{Binary: exe, Dir: t.TempDir(),
		Env: []string{"HACHAT_DEMO_FAKE=1"}, ReadyTimeout: 10 * time.Second, Grace: 2 * time.Second, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sup.Stop)
	b, err := os.ReadFile(sup.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Credentials map[string]json.RawMessage `json:"credentials"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"accounts", "adminToken", "ucsReaderToken", "certDir"} {
		if _, ok := raw.Credentials[k]; !ok {
			t.Errorf("credentials lack %q: %s", k, b)
		}
	}
	var accounts []map[string]string
	if err := json.Unmarshal(raw.Credentials["accounts"], &accounts); err != nil || len(accounts) != 2 ||
		accounts[0]["user"] != "alice" || accounts[0]["password"] != "pw1" || accounts[0]["role"] != "agent" {
		t.Errorf("accounts = %s (%v)", raw.Credentials["accounts"], err)
	}
	st, err := ReadState(sup.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	if st.Credentials.UCSReaderToken != "rd" || st.Credentials.AdminToken != "adm" || len(st.Credentials.Accounts) != 2 {
		t.Fatalf("credentials read back = %+v", st.Credentials)
	}
	fi, err := os.Stat(sup.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("state file mode %v: readable by others", fi.Mode().Perm())
	}
}
