package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// The failure-matrix row "UCS slow, down, erroring: chats go on; saves retry
// per transcript-resend-attempts/-delay behind a breaker", under a workload
// on the pair.

// sendTiming is one send attempt as a timed side saw it.
type sendTiming struct {
	start time.Time
	took  time.Duration
	err   error
}

// sendClock records every send attempt of the sides it wraps.
type sendClock struct {
	mu       sync.Mutex
	attempts []sendTiming
}

// timedSide is a workload side whose sends sendClock times.
type timedSide struct {
	harness.Side
	clock *sendClock
}

// Send implements harness.Side.
func (s timedSide) Send(ctx context.Context, text, cmid string) (uint64, bool, error) {
	start := time.Now()
	idx, retryable, err := s.Side.Send(ctx, text, cmid)
	s.clock.mu.Lock()
	s.clock.attempts = append(s.clock.attempts, sendTiming{start, time.Since(start), err})
	s.clock.mu.Unlock()
	return idx, retryable, err
}

// timed returns copies of sessions whose sides report to clock.
func (clock *sendClock) timed(sessions []*harness.Session) []*harness.Session {
	out := make([]*harness.Session, 0, len(sessions))
	for _, s := range sessions {
		cp := *s
		cp.Sides = nil
		for _, side := range s.Sides {
			cp.Sides = append(cp.Sides, timedSide{side, clock})
		}
		out = append(out, &cp)
	}
	return out
}

// between returns the durations of the attempts started in [from, to).
func (clock *sendClock) between(from, to time.Time) []time.Duration {
	clock.mu.Lock()
	defer clock.mu.Unlock()
	var out []time.Duration
	for _, a := range clock.attempts {
		if !a.start.Before(from) && a.start.Before(to) {
			out = append(out, a.took)
		}
	}
	slices.Sort(out)
	return out
}

// ucsQuantile returns the q-quantile of sorted durations (0 when empty).
func ucsQuantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// TestUCSSlowAndErroringUnderLoad: while the workload runs on the pair, UCS
// first answers every save 3 s late, then fails half of them, then is down
// (every transcript and epoch endpoint answers 503), then is up but fails
// every save (recoverable, HTTP 503). Chats go on: every send is
// acknowledged, sends stay fast while saves are slow (the backup's copy
// acknowledges them, not UCS) and reach the other participant at once, and every acknowledged message reaches both
// participants exactly once and in order while UCS still fails. The saver
// resends (transcript-resend-attempts/-delay) and its breaker opens; UCS
// meanwhile lacks acknowledged messages. Once the faults are cleared, with no
// new message to trigger a save, the retries alone bring every transcript up
// to every acknowledged message, and the breaker closes.
func TestUCSSlowAndErroringUnderLoad(t *testing.T) {
	const (
		messages  = 80
		latencyMs = 3000
	)
	c := harness.StartCluster(t, harness.Options{Stage: demo.StagePair, CoreArgs: []string{
		"--transcript-resend-delay=250ms", "--transcript-breaker-timeout=1s",
	}})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)
	clock := &sendClock{}
	sessions := clock.timed(c.StartSessions(t, matrixSessions))
	ucs, token := c.UCS(), c.AdminToken()
	setFaults := func(f ucsmock.Faults) time.Time {
		t.Helper()
		if err := ucs.SetFaults(t.Context(), token, f); err != nil {
			t.Fatalf("set UCS faults %+v: %v", f, err)
		}
		return time.Now()
	}
	// Clear the faults whatever happens, so the cluster stops cleanly.
	t.Cleanup(func() { ucs.ClearFaults(context.Background(), token) })

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	total := len(sessions) * 2 * messages
	w := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: messages, Interval: 100 * time.Millisecond})
	waitAcked := func(frac float64) {
		t.Helper()
		if err := w.WaitAcked(ctx, int(frac*float64(total))); err != nil {
			t.Fatal(err)
		}
	}

	waitAcked(0.05)
	before, err := ucs.Stats(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	slowFrom := setFaults(ucsmock.Faults{LatencyMs: latencyMs})
	// A message sent while its session's save is held up reaches the other
	// participant at once: fan-out does not wait for UCS.
	waitAcked(0.05 + 12/float64(total))
	probe := sessions[0]
	probeText := "delivery probe while UCS is slow " + probe.ChatID
	var sentAt time.Time
	harness.Eventually(t, "the probe acknowledged", 5*time.Second, func() error {
		r, err := probe.Customer.Send(ctx, probeText, "probe-"+probe.ChatID)
		if err != nil {
			return err
		}
		if err := r.Err(); err != nil {
			if !r.Retryable() {
				t.Fatalf("probe send: %v", err)
			}
			return err
		}
		sentAt = time.Now()
		return nil
	})
	pctx, pcancel := context.WithTimeout(ctx, latencyMs*time.Millisecond/2)
	_, err = probe.Agent.WaitText(pctx, probe.ChatID, probeText)
	pcancel()
	if err != nil {
		t.Errorf("the agent did not see a message within %d ms of its acknowledgement while UCS was slow: %v", latencyMs/2, err)
	} else {
		t.Logf("a message sent while UCS was slow reached the agent %s after its acknowledgement", time.Since(sentAt).Round(time.Microsecond))
	}
	// The slow phase lasts until a save has waited out the whole latency
	// (ucsmock counts a delayed request when the delay ends) while the
	// workload sent on.
	harness.Eventually(t, "a save delayed by UCS", 15*time.Second, func() error {
		st, err := ucs.Stats(ctx, token)
		if err != nil {
			return err
		}
		if st.FaultsInjected == before.FaultsInjected {
			return fmt.Errorf("no delayed request yet (%d saves)", st.Saves-before.Saves)
		}
		return nil
	})
	waitAcked(0.35)
	flakyFrom := setFaults(ucsmock.Faults{RecoverableErrorRate: 0.5})
	waitAcked(0.55)
	downFrom := setFaults(ucsmock.Faults{Outage: true})
	waitAcked(0.70)
	erroringFrom := setFaults(ucsmock.Faults{RecoverableErrorRate: 1})
	harness.Eventually(t, "core-a's UCS breaker open", 20*time.Second, func() error {
		if v := c.Metric("core-a", "hachat_core_transcript_breaker_state"); v != 2 {
			return fmt.Errorf("breaker state %v", v)
		}
		return nil
	})
	rec := w.Wait()
	t.Logf("workload: %d of %d acknowledged; UCS slow from %s, flaky from %s, down from %s, erroring from %s",
		rec.Acked(), total, slowFrom.Format("15:04:05.000"), flakyFrom.Format("15:04:05.000"),
		downFrom.Format("15:04:05.000"), erroringFrom.Format("15:04:05.000"))
	if rec.Acked() != total {
		t.Errorf("%d of %d messages acknowledged: UCS trouble failed a chat send", rec.Acked(), total)
	}

	// Sends do not wait for UCS: none started while saves took 3 s came
	// anywhere near that.
	slow := clock.between(slowFrom, flakyFrom)
	all := clock.between(time.Time{}, time.Now())
	t.Logf("send attempts while UCS was slow: %d, p50 %s, p99 %s, max %s (all attempts: %d, p50 %s, max %s)",
		len(slow), ucsQuantile(slow, 0.5), ucsQuantile(slow, 0.99), ucsQuantile(slow, 1),
		len(all), ucsQuantile(all, 0.5), ucsQuantile(all, 1))
	if len(slow) < 10 {
		t.Errorf("only %d send attempts while UCS was slow", len(slow))
	}
	if m := ucsQuantile(slow, 1); m >= latencyMs*time.Millisecond/2 {
		t.Errorf("a send took %s while UCS answered in %d ms: sends wait for UCS", m, latencyMs)
	}

	// While UCS still fails every save: both participants (and the push
	// channel) hold every acknowledged message exactly once, in order.
	harness.Check(t, ctx, rec, harness.CheckOptions{})
	// ... and UCS does not (the faults bit).
	behind := 0
	for _, s := range sessions {
		tr, err := ucs.Transcript(ctx, s.ChatID)
		if err != nil {
			behind++ // nothing saved at all
			continue
		}
		have := map[string]bool{}
		for _, ev := range harness.TranscriptView(tr) {
			have[ev.Text] = true
		}
		for _, m := range rec.Of(s.ChatID) {
			if m.Acked && !have[m.Text] {
				behind++
				break
			}
		}
	}
	if behind != len(sessions) {
		t.Errorf("only %d of %d UCS transcripts lack acknowledged messages while every save fails", behind, len(sessions))
	}
	st, err := ucs.Stats(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	recoverable := c.Metric("core-a", "hachat_core_transcript_saves_total", `result="recoverable"`)
	refused := c.Metric("core-a", "hachat_core_transcript_saves_total", `result="breaker_open"`)
	resends := c.Metric("core-a", "hachat_core_transcript_resend_attempts_total")
	t.Logf("under faults: ucs faultsInjected %d, saves %d; core-a saves recoverable %v, breaker_open %v, resends %v",
		st.FaultsInjected, st.Saves, recoverable, refused, resends)
	if recoverable == 0 || resends == 0 || refused == 0 {
		t.Errorf("core-a counts %v recoverable failures, %v resends, %v saves refused by the open breaker: want all > 0", recoverable, resends, refused)
	}

	// Faults cleared, no message sent: the saver's retries catch UCS up.
	clearedAt := time.Now()
	if err := ucs.ClearFaults(ctx, token); err != nil {
		t.Fatal(err)
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: ucs, TranscriptTimeout: 30 * time.Second})
	t.Logf("every UCS transcript holds every acknowledged message %s after the faults were cleared", time.Since(clearedAt).Round(time.Millisecond))
	harness.Eventually(t, "core-a's UCS breaker closed", 15*time.Second, func() error {
		if v := c.Metric("core-a", "hachat_core_transcript_breaker_state"); v != 0 {
			return fmt.Errorf("breaker state %v", v)
		}
		return nil
	})
	if role := c.Role("core-a"); role != "primary" {
		t.Errorf("core-a is %q after UCS trouble", role)
	}
	if n := c.Metric("core-a", "hachat_core_sessions_live"); n != float64(len(sessions)) {
		t.Errorf("core-a holds %v live sessions, want %d: UCS trouble ended chats", n, len(sessions))
	}
	// Logs and metrics tell the truth: the trouble was reported at WARN,
	// rate-limited, and its end too; every save succeeded in the end, so
	// nothing counts as given up, whatever ran out of resends meanwhile.
	if n := c.Metric("core-a", "hachat_core_transcript_save_failures_total"); n != 0 {
		t.Errorf("core-a counts %v saves given up, but every transcript is complete", n)
	}
	exhausted := c.Metric("core-a", "hachat_core_transcript_resends_exhausted_total")
	recovered := c.Metric("core-a", "hachat_core_transcript_saves_recovered_total")
	t.Logf("core-a: %v saves ran out of resends, %v of them recovered", exhausted, recovered)
	const warning = "transcript saves failing"
	warns := c.LogCount("core-a", warning)
	if limit := int(time.Since(slowFrom)/(5*time.Second)) + 2; warns == 0 || warns > limit {
		t.Errorf("core-a logged %q %d times over %s of UCS trouble: want 1 to %d (rate-limited WARN)",
			warning, warns, time.Since(slowFrom).Round(time.Second), limit)
	}
	if !c.LogContains("core-a", "transcript saves reach UCS again") {
		t.Errorf("core-a never logged that saves reach UCS again")
	}
}
