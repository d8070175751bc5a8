package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
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
