package chatcore

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry/telemetrytest"
)

func (tc *testCore) savedIndexes(id string) []uint64 { return tc.store.indexes(id) }

func (tc *testCore) saveCalls() int {
	tc.store.mu.Lock()
	defer tc.store.mu.Unlock()
	return tc.store.saves
}

func (tc *testCore) logKinds(id string) []chatpb.EventKind {
	s := tc.c.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []chatpb.EventKind
	for _, e := range s.log.Entries() {
		out = append(out, e.Ev.Kind)
	}
	return out
}

func (tc *testCore) savedKinds(id string) []chatpb.EventKind {
	tr, err := tc.store.Transcript(context.Background(), id)
	if err != nil {
		return nil
	}
	return kinds(tr.Events)
}

// waitJoinsSaved waits until the customer's and the agent's joins are in UCS.
func (tc *testCore) waitJoinsSaved(t testing.TB, id string) {
	t.Helper()
	waitFor(t, "joins saved", func() bool {
		n := 0
		for _, k := range tc.savedKinds(id) {
			if k == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED {
				n++
			}
		}
		return n == 2
	})
}

func typing(a *chatpb.Auth) *chatpb.SendRequest {
	return &chatpb.SendRequest{Auth: a, Kind: chatpb.EventKind_EVENT_KIND_TYPING_STARTED}
}

func TestTranscriptAutoSaveModes(t *testing.T) {
	for _, mode := range []int{AutoSaveAtEnd, AutoSaveEveryMessage, AutoSaveWithNotices} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			tc := startCore(t, func(c *Config) { c.TranscriptAutoSave = mode })
			ctx := ctxT(t)
			cust, agent := tc.chat(t)
			id := cust.SessionId
			if _, err := tc.cl.Send(ctx, typing(cust)); err != nil {
				t.Fatal(err)
			}
			r, err := tc.cl.Send(ctx, msg(cust, "hello", ""))
			if err != nil {
				t.Fatal(err)
			}
			if mode == AutoSaveAtEnd {
				time.Sleep(50 * time.Millisecond) // nothing may be saved: give a wrong save the chance to show
				if n := tc.saveCalls(); n != 0 {
					t.Fatalf("mode 0 saved %d times before the end", n)
				}
			} else {
				waitFor(t, "message saved", func() bool { return slices.Contains(tc.savedIndexes(id), r.Index) })
				if slices.Contains(tc.savedKinds(id), chatpb.EventKind_EVENT_KIND_TYPING_STARTED) {
					t.Error("typing notice saved although transcript-save-notices excludes it")
				}
			}
			if mode == AutoSaveWithNotices {
				// The save of "hello" is noticed after it: an earlier save
				// (of the joins) may already have put a notice before it.
				waitFor(t, "save notice after the message", func() bool {
					ks := tc.logKinds(id)
					return len(ks) > int(r.Index) && slices.Contains(ks[r.Index:], chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED)
				})
				evs := tc.events(t, cust)
				last := evs[len(evs)-1]
				if last.Kind != chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED || last.Attrs["noticeType"] != "save" {
					t.Errorf("customer did not see the save notice: %v", last)
				}
			} else if slices.Contains(tc.logKinds(id), chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED) {
				t.Errorf("mode %d appended a save notice", mode)
			}
			if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: agent, EndSession: true}); err != nil {
				t.Fatal(err)
			}
			n := uint64(tc.logLen(id))
			waitFor(t, "final save", func() bool {
				tr, err := tc.store.Transcript(ctx, id)
				return err == nil && tr.Ended && tr.Events[len(tr.Events)-1].Index == n
			})
			tr, _ := tc.store.Transcript(ctx, id)
			for _, ev := range tr.Events {
				if ev.Kind == chatpb.EventKind_EVENT_KIND_TYPING_STARTED {
					t.Error("typing saved")
				}
				if ev.Epoch != 1 || ev.SessionId != id {
					t.Errorf("saved event %d: epoch %d session %q", ev.Index, ev.Epoch, ev.SessionId)
				}
			}
			// The customer's key hash is saved (restoration re-authenticates from it).
			if tr.Events[1].KeyHash != hashKey(cust.SecureKey) {
				t.Error("saved join lost its key hash")
			}
		})
	}
}

func TestTranscriptSaveNotices(t *testing.T) {
	for _, c := range []struct {
		notices string
		typing  bool
	}{{"all", true}, {"none", false}, {"typing", true}, {"custom,save", false}} {
		t.Run(c.notices, func(t *testing.T) {
			tc := startCore(t, func(cfg *Config) { cfg.TranscriptAutoSave = 1; cfg.TranscriptSaveNotices = c.notices })
			ctx := ctxT(t)
			cust, _ := tc.chat(t)
			if _, err := tc.cl.Send(ctx, typing(cust)); err != nil {
				t.Fatal(err)
			}
			r, err := tc.cl.Send(ctx, msg(cust, "m", ""))
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "saved", func() bool { return slices.Contains(tc.savedIndexes(cust.SessionId), r.Index) })
			if got := slices.Contains(tc.savedIndexes(cust.SessionId), r.Index-1); got != c.typing {
				t.Errorf("typing saved = %v, want %v", got, c.typing)
			}
		})
	}
}

func TestTranscriptResendAttemptsCounted(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.TranscriptAutoSave = 1; c.TranscriptResendAttempts = 3 })
	ctx := ctxT(t)
	cust, _ := tc.chat(t)
	waitFor(t, "initial saves", func() bool { return len(tc.savedIndexes(cust.SessionId)) == 3 })
	tc.store.set(func(m *memStore) { m.failNext = 2 })
	r, err := tc.cl.Send(ctx, msg(cust, "hello", ""))
	if err != nil {
		t.Fatalf("send while UCS fails: %v", err) // saves never block delivery
	}
	waitFor(t, "saved after resends", func() bool { return slices.Contains(tc.savedIndexes(cust.SessionId), r.Index) })
	if got := tc.metric(t, "hachat_core_transcript_resend_attempts_total"); got != 2 {
		t.Errorf("resend attempts %v, want 2", got)
	}
	if got := tc.metric(t, "hachat_core_transcript_saves_total", "result", "recoverable"); got != 2 {
		t.Errorf("recoverable failures %v, want 2", got)
	}
}

func TestTranscriptGiveUpNoticeAndBreaker(t *testing.T) {
	tc := startCore(t, func(c *Config) {
		c.TranscriptAutoSave = AutoSaveWithNotices
		c.TranscriptResendAttempts = 2
		c.TranscriptBreakerFailures = 3
		c.TranscriptBreakerTimeout = 100 * time.Millisecond
	})
	ctx := ctxT(t)
	cust, _ := tc.chat(t)
	id := cust.SessionId
	tc.waitJoinsSaved(t, id)
	tc.store.set(func(m *memStore) { m.saveErr = fmt.Errorf("outage: %w", ErrUnavailable) })
	r, err := tc.cl.Send(ctx, msg(cust, "during outage", ""))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "save-fail notice", func() bool {
		return slices.Contains(tc.logKinds(id), chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED)
	})
	if got := tc.metric(t, "hachat_core_transcript_resends_exhausted_total"); got != 1 {
		t.Errorf("saves out of resends %v, want 1", got)
	}
	if got := tc.metric(t, "hachat_core_transcript_resend_attempts_total"); got != 2 {
		t.Errorf("resends %v, want 2", got)
	}
	if got := tc.metric(t, "hachat_core_transcript_breaker_state"); got != 2 {
		t.Errorf("breaker state %v, want 2 (open) after 3 consecutive failures", got)
	}
	// UCS recovers: the breaker half-opens, a probe succeeds, and the pending
	// events (the message and the fail notice) get saved without a new message.
	tc.store.set(func(m *memStore) { m.saveErr = nil })
	waitFor(t, "pending save after recovery", func() bool { return slices.Contains(tc.savedIndexes(id), r.Index) })
	waitFor(t, "breaker closed", func() bool { return tc.metric(t, "hachat_core_transcript_breaker_state") == 0 })
	// The save succeeded in the end: nothing was given up.
	if got := tc.metric(t, "hachat_core_transcript_save_failures_total"); got != 0 {
		t.Errorf("give-ups %v after every save succeeded, want 0", got)
	}
	if got := tc.metric(t, "hachat_core_transcript_saves_recovered_total"); got != 1 {
		t.Errorf("recovered saves %v, want 1", got)
	}
}

func TestTranscriptSaveOnError(t *testing.T) {
	for _, policy := range []string{SaveOnErrorClose, SaveOnErrorContinue} {
		t.Run(policy, func(t *testing.T) {
			tc := startCore(t, func(c *Config) { c.TranscriptAutoSave = 1; c.TranscriptSaveOnError = policy })
			ctx := ctxT(t)
			cust, agent := tc.chat(t)
			id := cust.SessionId
			tc.waitJoinsSaved(t, id)
			tc.store.set(func(m *memStore) { m.saveErr = fmt.Errorf("422: %w", ErrNonRecoverable) })
			if _, err := tc.cl.Send(ctx, msg(cust, "hello", "")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "non-recoverable seen", func() bool {
				return tc.metric(t, "hachat_core_transcript_saves_total", "result", "nonrecoverable") >= 1
			})
			if policy == SaveOnErrorClose {
				waitFor(t, "session closed", func() bool {
					k := tc.logKinds(id)
					return k[len(k)-1] == chatpb.EventKind_EVENT_KIND_SESSION_ENDED
				})
				evs := tc.events(t, agent)
				if r := evs[len(evs)-1].Attrs["reason"]; r != "transcript-save-error" {
					t.Errorf("end reason %q", r)
				}
				calls := tc.saveCalls()
				tc.store.set(func(m *memStore) { m.saveErr = nil })
				time.Sleep(100 * time.Millisecond) // a wrong final save would happen now
				if tc.saveCalls() != calls {
					t.Error("a final save happened after close")
				}
				if got := tc.metric(t, "hachat_core_transcript_save_failures_total"); got != 1 {
					t.Errorf("give-ups %v, want 1: the closed session is never saved again", got)
				}
				return
			}
			// continue: the chat goes on and later saves succeed.
			tc.store.set(func(m *memStore) { m.saveErr = nil })
			r, err := tc.cl.Send(ctx, msg(agent, "still here", ""))
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "later save", func() bool { return slices.Contains(tc.savedIndexes(id), r.Index) })
			// The saver counts the recovery once the store answered: after
			// the store holds the save, so wait for the count too.
			waitFor(t, "the recovered save counted", func() bool {
				return tc.metric(t, "hachat_core_transcript_saves_recovered_total") >= 1
			})
			if got := tc.metric(t, "hachat_core_transcript_saves_recovered_total"); got != 1 {
				t.Errorf("recovered saves %v, want 1", got)
			}
			if got := tc.metric(t, "hachat_core_transcript_save_failures_total"); got != 0 {
				t.Errorf("give-ups %v after the later save succeeded, want 0", got)
			}
		})
	}
}

func TestStaleEpochStepsDown(t *testing.T) {
	tc := startCore(t, func(c *Config) { c.TranscriptAutoSave = 1 })
	ctx := ctxT(t)
	cust, _ := tc.chat(t)
	sub, err := tc.cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: cust, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.store.ClaimEpoch(ctx, "hachat", 1, 2, "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.cl.Send(ctx, msg(cust, "x", "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "step-down", func() bool { return tc.c.Role() == RoleBackup })
	for {
		if _, err := sub.Recv(); err != nil {
			if grpcCode(err).String() != "Unavailable" {
				t.Fatalf("stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
}

// withLogTo sends the core's WARN and above to buf.
func withLogTo(buf *telemetrytest.LogBuffer) Option {
	return func(c *Core) {
		c.log = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
}

// TestUCSOutageWarnsAndCountsNoGiveUp: a primary cut off from UCS says so
// at WARN at the first failed save, not only once resends run out (here
// they never do within the test), and not once per failure: the WARNs are
// rate-limited. When UCS comes back and every save succeeds, nothing counts
// as given up.
func TestUCSOutageWarnsAndCountsNoGiveUp(t *testing.T) {
	var logs telemetrytest.LogBuffer
	tc := startCore(t, func(c *Config) {
		c.TranscriptAutoSave = 1
		c.TranscriptResendAttempts = 1_000_000 // resends never run out: only the outage itself may warn
		c.TranscriptResendDelay = 5 * time.Millisecond
		c.TranscriptBreakerFailures = 1_000_000 // no breaker WARN either
	}, withLogTo(&logs))
	const sessions = 5
	custs := make([]*chatpb.Auth, sessions)
	for i := range custs {
		custs[i], _ = tc.chat(t)
		tc.waitJoinsSaved(t, custs[i].SessionId)
	}
	tc.store.set(func(m *memStore) { m.saveErr = fmt.Errorf("cut off: %w", ErrUnavailable) })
	ctx := ctxT(t)
	for _, cu := range custs {
		if _, err := tc.cl.Send(ctx, msg(cu, "during the outage", "")); err != nil {
			t.Fatalf("send while UCS is cut off: %v", err)
		}
	}
	const warning = "transcript saves failing"
	waitFor(t, "a WARN about UCS", func() bool { return strings.Contains(logs.String(), warning) })
	// Hundreds of failed attempts later, still one WARN per ucsWarnEvery.
	waitFor(t, "many failed attempts", func() bool {
		return tc.metric(t, "hachat_core_transcript_saves_total", "result", "recoverable") >= 200
	})
	if n := strings.Count(logs.String(), warning); n > 2 {
		t.Errorf("%d WARNs about failing saves within a few hundred ms: not rate-limited\n%s", n, logs.String())
	}

	// Every save succeeds in the end: no give-up, whatever the resends did.
	tc.store.set(func(m *memStore) { m.saveErr = nil })
	for _, cu := range custs {
		waitFor(t, "saved after the outage", func() bool { return len(tc.savedIndexes(cu.SessionId)) == 4 })
	}
	if got := tc.metric(t, "hachat_core_transcript_save_failures_total"); got != 0 {
		t.Errorf("give-ups %v after every save succeeded, want 0", got)
	}
}
