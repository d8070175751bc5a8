package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// TestUCSInstanceKilledUnderLoad: ucs runs as two instances on one
// PostgreSQL database (--ucs-store postgres) and the cores are given both.
// Under a workload, ucs (the instance the cores save to) is killed with
// SIGKILL: every message is still acknowledged, every view shows each once
// and in order, and every transcript read through the other instance (so
// from PostgreSQL) holds every acknowledged message; the primary counts the
// dead instance's failures and its move to ucs-2, and gives up no save.
func TestUCSInstanceKilledUnderLoad(t *testing.T) {
	const messages = 40
	c := harness.StartCluster(t, harness.Options{Stage: demo.StagePair, UCSStore: "postgres"})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	sessions := c.StartSessions(t, matrixSessions)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	total := len(sessions) * 2 * messages
	w := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: messages, Interval: 50 * time.Millisecond})
	if err := w.WaitAcked(ctx, total/4); err != nil {
		t.Fatalf("workload before the kill: %v", err)
	}
	c.Kill("ucs", syscall.SIGKILL)
	rec := w.Wait()
	if got := rec.Acked(); got != total {
		t.Errorf("%d of %d messages acknowledged after one ucs instance died: first failures %v", got, total, firstUnacked(rec, 3))
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: c.UCSOf("ucs-2"), MinAcked: total})

	dead := fmt.Sprintf("instance=%q", c.URL("ucs"))
	if n := c.Metric("core-a", "ucs_client_instance_failures_total", dead); n < 1 {
		t.Errorf("core-a counted %v failures of the killed ucs, want >= 1", n)
	}
	if n := c.Metric("core-a", "ucs_client_failovers_total"); n < 1 {
		t.Errorf("core-a moved to another ucs instance %v times, want >= 1", n)
	}
	if n := c.Metric("core-a", "hachat_core_transcript_save_failures_total"); n != 0 {
		t.Errorf("core-a gave up %v saves, want 0", n)
	}
	if n := c.Metric("ucs-2", "ucs_store_info", `store="postgres"`); n != 1 {
		t.Errorf("ucs-2 ucs_store_info{store=postgres} = %v, want 1", n)
	}
}

// firstUnacked lists up to n messages that were not acknowledged.
func firstUnacked(rec *harness.Record, n int) []string {
	var out []string
	for _, s := range rec.Sent {
		if !s.Acked && len(out) < n {
			out = append(out, fmt.Sprintf("%s: %v", s.Text, s.Err))
		}
	}
	return out
}

// TestDemoCommandUCSPostgres runs `hachat demo --ucs-store postgres` as a
// person would: the state file lists two parts of kind ucs and the
// PostgreSQL cluster; a chat goes on after kill -9 of the ucs instance,
// and its transcript is read through the other one; SIGTERM stops
// PostgreSQL with the rest and removes its directory. A bad --ucs-store
// is refused before anything starts.
func TestDemoCommandUCSPostgres(t *testing.T) {
	bad := exec.Command(harness.Binary(t), "demo", "--ucs-store", "mongo", "--free-ports", "--dir", t.TempDir())
	if out, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(out), "--ucs-store must be bbolt or postgres") {
		t.Fatalf("demo --ucs-store mongo: %v: %s", err, out)
	}

	_, state, cmd, _, exited := startFreeDemo(t, nil, "--ucs-store", "postgres")
	st, err := demo.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ucs", "ucs-2"} {
		p, ok := st.Part(name)
		if !ok || p.Kind != demo.KindUCS || p.State != demo.StateRunning || p.PID <= 0 {
			t.Fatalf("state entry of %s: %+v (ok=%v)", name, p, ok)
		}
	}
	if st.UCSStore == nil || st.UCSStore.Kind != "postgres" || st.UCSStore.PID <= 0 || syscall.Kill(st.UCSStore.PID, 0) != nil {
		t.Fatalf("state file ucsStore: %+v", st.UCSStore)
	}

	webapi, _ := st.Part("webapi")
	interaction, _ := st.Part("interaction")
	gms := &harness.GMS{Base: "http://" + webapi.HTTP, Service: "customer-support", HTTP: http.DefaultClient}
	agents := &harness.AgentAPI{Base: "http://" + interaction.HTTP, HTTP: http.DefaultClient, Accounts: st.Credentials.Accounts}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	agent := agents.MustLogin(t, "ada", "agent")
	chat := gms.MustStart(t, "Grace")
	if err := agent.Take(ctx, chat.ChatID); err != nil {
		t.Fatal(err)
	}
	send := func(text, cmid string) {
		t.Helper()
		r, err := chat.Send(ctx, text, cmid)
		for err == nil && r.Retryable() {
			r, err = chat.Send(ctx, text, cmid)
		}
		if err != nil || !r.OK() {
			t.Fatalf("send %q: %v %+v", text, err, r)
		}
		if _, err := agent.WaitText(ctx, chat.ChatID, text); err != nil {
			t.Fatal(err)
		}
	}
	send("before the ucs kill", "pg-1")
	ucs1, _ := st.Part("ucs")
	if err := syscall.Kill(ucs1.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	send("after the ucs kill", "pg-2")

	ucs2, _ := st.Part("ucs-2")
	tlsc, err := demo.OperatorTLS(st.Credentials.CertDir)
	if err != nil {
		t.Fatal(err)
	}
	reader := ucsmock.NewClient("https://"+ucs2.HTTP, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsc}}, nil).
		WithToken(st.Credentials.UCSReaderToken)
	harness.Eventually(t, "both messages in the transcript read through ucs-2", 20*time.Second, func() error {
		tr, err := reader.Transcript(ctx, chat.ChatID)
		if err != nil {
			return err
		}
		found := map[string]int{}
		for _, e := range tr.Events {
			found[e.GetText()]++
		}
		if found["before the ucs kill"] != 1 || found["after the ucs kill"] != 1 {
			return fmt.Errorf("transcript has %v", found)
		}
		return nil
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("demo exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30s of SIGTERM")
	}
	if err := syscall.Kill(st.UCSStore.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postgresql (pid %d) still runs after the demo stopped", st.UCSStore.PID)
	}
	if _, err := os.Stat(st.UCSStore.Dir); !os.IsNotExist(err) {
		t.Errorf("postgresql's directory %s is left behind: %v", st.UCSStore.Dir, err)
	}
}
