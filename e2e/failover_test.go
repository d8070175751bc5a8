package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// The failure matrix of the primary/backup pair (DESIGN.md): each test runs
// a workload of concurrent sessions sending numbered messages from customer
// and agent, injects one fault in the middle, and proves with the checker
// that every acknowledged message is in every view and in UCS exactly once,
// in order.

const (
	matrixSessions = 3
	matrixMessages = 30
)

// pair starts the stage-3 cluster (ucs, witness, core-a primary, core-b
// backup, webapi, interaction) and its sessions.
func pair(t *testing.T, opts harness.Options) (*harness.Cluster, []*harness.Session) {
	t.Helper()
	opts.Stage = demo.StagePair
	c := harness.StartCluster(t, opts)
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	return c, c.StartSessions(t, matrixSessions)
}

// aroundFault runs the workload, calls fault once a third of the messages
// are acknowledged, and returns the record once every side is done.
func aroundFault(t *testing.T, sessions []*harness.Session, fault func()) *harness.Record {
	t.Helper()
	return aroundFaultW(t, sessions, func(*harness.Workload) { fault() })
}

// aroundFaultW is aroundFault whose fault sees the running workload (to
// wait for acknowledgements during the fault).
func aroundFaultW(t *testing.T, sessions []*harness.Session, fault func(w *harness.Workload)) *harness.Record {
	t.Helper()
	return aroundFaultEvery(t, sessions, 30*time.Millisecond, fault)
}

// aroundFaultEvery is aroundFaultW with each side sending every interval:
// a fault that takes its time needs a workload that outlasts it, or the
// messages sent after it are none.
func aroundFaultEvery(t *testing.T, sessions []*harness.Session, interval time.Duration, fault func(w *harness.Workload)) *harness.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	w := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: matrixMessages, Interval: interval})
	total := len(sessions) * 2 * matrixMessages
	if err := w.WaitAcked(ctx, total/3); err != nil {
		t.Fatal(err)
	}
	t.Logf("fault after %d acknowledged messages", w.Acked())
	fault(w)
	rec := w.Wait()
	t.Logf("workload done: %d of %d acknowledged", rec.Acked(), total)
	return rec
}

func allAcked(t *testing.T, rec *harness.Record) {
	t.Helper()
	if want := len(rec.Sessions) * 2 * matrixMessages; rec.Acked() != want {
		t.Errorf("%d of %d messages acknowledged: a client saw a failure it could not retry through", rec.Acked(), want)
	}
}

// TestFailoverKill9Primary: kill -9 of the primary; the backup promotes,
// chats continue, nothing acknowledged is lost, both sides see the
// disconnected / reconnected notices.
func TestFailoverKill9Primary(t *testing.T) {
	c, sessions := pair(t, harness.Options{})
	var killedAt time.Time
	rec := aroundFault(t, sessions, func() {
		killedAt = time.Now()
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
		t.Logf("core-b primary %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
	if n := c.Metric("core-b", "hachat_core_failovers_total"); n != 1 {
		t.Errorf("core-b counts %v failovers, want 1", n)
	}
}

// TestFailoverSilentPrimary: SIGSTOP of the primary; the backup promotes
// after detection; on SIGCONT the old primary finds itself fenced, steps
// down and resyncs as backup, with no message committed by two primaries.
func TestFailoverSilentPrimary(t *testing.T) {
	c, sessions := pair(t, harness.Options{})
	rec := aroundFault(t, sessions, func() {
		c.Kill("core-a", syscall.SIGSTOP)
		c.WaitRole("core-b", "primary", 15*time.Second)
		// Let the new primary commit under its epoch while the old one is frozen.
		time.Sleep(300 * time.Millisecond)
		c.Kill("core-a", syscall.SIGCONT)
		c.WaitRole("core-a", "backup", 15*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
	if n := c.Metric("core-a", "hachat_core_step_downs_total"); n < 1 {
		t.Errorf("core-a counts %v step-downs after being fenced", n)
	}
	// The old primary resyncs as backup: killing the new primary now loses nothing.
	c.WaitBackupInSync("core-b", 15*time.Second)
}

// TestFailoverBackupLinkCut: only the primary-backup link is cut while both
// stay in the cluster: no failover, the primary keeps serving with second
// copies in UCS, and replication catches up after the heal.
func TestFailoverBackupLinkCut(t *testing.T) {
	var link *harness.Link
	c, sessions := pair(t, harness.Options{Tune: func(p demo.Plan) demo.Plan {
		a, _ := p.Part("core-a")
		link = harness.NewLink(t, a.GRPC)
		return p.With("core-b", "--peer="+link.Addr())
	}})
	var syncsBefore int
	rec := aroundFault(t, sessions, func() {
		syncsBefore = c.LogCount("core-a", "backup in sync")
		link.Cut()
		harness.Eventually(t, "second copies going to UCS", 15*time.Second, func() error {
			if n := c.Metric("core-a", "hachat_core_second_copy_ucs_total"); n == 0 {
				return fmt.Errorf("no second copy in UCS yet")
			}
			return nil
		})
		time.Sleep(time.Second) // the cut lasts a while: the backup must not promote
		if role := c.Role("core-b"); role != "backup" {
			t.Errorf("core-b became %q over a cut link to a live primary", role)
		}
		link.Heal()
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
	if role := c.Role("core-a"); role != "primary" {
		t.Errorf("core-a is %q after the link healed", role)
	}
	if n := c.Metric("core-b", "hachat_core_failovers_total"); n != 0 {
		t.Errorf("core-b promoted %v times", n)
	}
	c.WaitBackupInSync("core-a", 20*time.Second)
	harness.Eventually(t, "a resync since the cut", 20*time.Second, func() error {
		if n := c.LogCount("core-a", "backup in sync"); n <= syncsBefore {
			return fmt.Errorf("no resync logged since the cut (%d before, %d now)", syncsBefore, n)
		}
		return nil
	})
}

// TestFailoverBackupKilledAndRestarted: the primary serves on while the
// backup is dead; the restarted backup resyncs every live session, proven by
// then killing the primary.
func TestFailoverBackupKilledAndRestarted(t *testing.T) {
	c, sessions := pair(t, harness.Options{})
	rec := aroundFault(t, sessions, func() {
		c.Kill("core-b", syscall.SIGKILL)
		time.Sleep(500 * time.Millisecond) // the primary serves alone for a while
		c.Restart("core-b")
		c.WaitRole("core-b", "backup", 15*time.Second)
	})
	allAcked(t, rec)
	c.WaitBackupInSync("core-a", 20*time.Second)
	// Every session lives on the restarted backup: kill the primary, then check.
	c.Kill("core-a", syscall.SIGKILL)
	c.WaitRole("core-b", "primary", 10*time.Second)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
	if n := c.Metric("core-b", "hachat_core_restored_sessions_total", `source="ucs"`); n != 0 {
		t.Errorf("core-b rebuilt %v sessions from UCS: the resync missed them", n)
	}
}

// TestFailoverUCSDownDuringFailover: UCS is down when the primary dies. The
// backup does not promote without a fencing epoch (clients get retryable
// errors), promotes as soon as UCS answers, and nothing acknowledged is lost.
func TestFailoverUCSDownDuringFailover(t *testing.T) {
	c, sessions := pair(t, harness.Options{})
	rec := aroundFault(t, sessions, func() {
		if err := c.UCS().SetFaults(t.Context(), c.AdminToken(), ucsmock.Faults{Outage: true}); err != nil {
			t.Fatal(err)
		}
		c.Kill("core-a", syscall.SIGKILL)
		time.Sleep(time.Second) // the backup must wait for UCS
		if role := c.Role("core-b"); role == "primary" {
			t.Errorf("core-b promoted without UCS, i.e. without a fencing epoch")
		}
		if err := c.UCS().ClearFaults(t.Context(), c.AdminToken()); err != nil {
			t.Fatal(err)
		}
		c.WaitRole("core-b", "primary", 15*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
}

// TestSwitchover: a planned switchover through `hachat ctl switchover`
// hands the primary role to the backup; no client sees an error.
func TestSwitchover(t *testing.T) {
	c, sessions := pair(t, harness.Options{})
	rec := aroundFault(t, sessions, func() {
		out, err := c.Ctl("switchover", "--admin-token", c.AdminToken())
		if err != nil {
			t.Errorf("hachat ctl switchover: %v\n%s", err, out)
			return
		}
		t.Logf("ctl switchover: %s", strings.TrimSpace(out))
		c.WaitRole("core-b", "primary", 10*time.Second)
		c.WaitRole("core-a", "backup", 10*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS()})
	out, err := c.Ctl("status")
	if err != nil || !strings.Contains(out, "core-b") {
		t.Errorf("hachat ctl status: %v\n%s", err, out)
	}
}

// TestFailoverOldPrimaryRejoinsAsBackup: after kill -9 and failover, the old
// primary restarted with its old flags (role primary) joins as backup, and
// can take over again: a second kill -9 loses nothing either.
func TestFailoverOldPrimaryRejoinsAsBackup(t *testing.T) {
	c, sessions := pair(t, harness.Options{})
	rec := aroundFault(t, sessions, func() {
		c.Kill("core-a", syscall.SIGKILL)
		c.WaitRole("core-b", "primary", 10*time.Second)
		c.Restart("core-a")
		c.WaitRole("core-a", "backup", 15*time.Second)
	})
	allAcked(t, rec)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
	c.WaitBackupInSync("core-b", 20*time.Second)
	c.Kill("core-b", syscall.SIGKILL)
	c.WaitRole("core-a", "primary", 10*time.Second)
	harness.Check(t, t.Context(), rec, harness.CheckOptions{UCS: c.UCS(), FailoverNotices: true})
}

// TestFailoverRestorationNone: with session-restoration-mode=none the new
// primary does not restore sessions, and clients are told clearly that the
// chat ended with the failover.
func TestFailoverRestorationNone(t *testing.T) {
	c, sessions := pair(t, harness.Options{CoreArgs: []string{"--session-restoration-mode=none"}})
	ctx := t.Context()
	for _, s := range sessions {
		if r, err := s.Customer.Send(ctx, "before the failover", ""); err != nil || !r.OK() {
			t.Fatalf("send: %v %+v", err, r)
		}
	}
	c.Kill("core-a", syscall.SIGKILL)
	c.WaitRole("core-b", "primary", 10*time.Second)
	for _, s := range sessions {
		harness.Eventually(t, "the customer is told the chat ended", 20*time.Second, func() error {
			r, err := s.Customer.Refresh(ctx, 1)
			if err != nil {
				return err
			}
			if !r.ChatEnded {
				return fmt.Errorf("refresh: %s", r.Raw)
			}
			return nil
		})
		r, err := s.Customer.Send(ctx, "after the failover", "")
		if err != nil {
			t.Fatal(err)
		}
		if r.OK() || !r.ChatEnded {
			t.Errorf("a send after the failover with restoration none: %s", r.Raw)
		}
	}
	if n := c.Metric("core-b", "hachat_core_sessions_live"); n != 0 {
		t.Errorf("core-b holds %v live sessions with restoration none", n)
	}
}
