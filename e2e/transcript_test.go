package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/ucsmock"
)

// savedMessages returns the texts of the Message events stored in UCS for
// chatID (nil and no error when UCS has no transcript yet).
func savedMessages(ctx context.Context, ucs *ucsmock.Client, chatID string) ([]string, *ucsmock.Transcript, error) {
	tr, err := ucs.Transcript(ctx, chatID)
	if errors.Is(err, ucsmock.ErrNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var out []string
	for _, ev := range harness.TranscriptView(tr) {
		if ev.Type == "Message" {
			out = append(out, ev.Text)
		}
	}
	return out, tr, nil
}

func mustSend(t *testing.T, chat *harness.Chat, text string) *harness.Response {
	t.Helper()
	r, err := chat.Send(t.Context(), text, "")
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("send %q: %s", text, r.Raw)
	}
	return r
}

// TestAutoSaveModes checks transcript-auto-save 0, 1 and 2 against UCS.
func TestAutoSaveModes(t *testing.T) {
	t.Run("0 saves only at the end", func(t *testing.T) {
		c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--transcript-auto-save=0"}})
		chat := c.Customer().MustStart(t, "Ann")
		for i := range 3 {
			mustSend(t, chat, fmt.Sprintf("m%d", i))
		}
		// Give a (wrong) per-message save the time to land: the saver runs in
		// milliseconds on a healthy UCS, so 700ms of nothing is a real signal.
		deadline := time.Now().Add(700 * time.Millisecond)
		for time.Now().Before(deadline) {
			saved, _, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err != nil {
				t.Fatal(err)
			}
			if len(saved) > 0 {
				t.Fatalf("transcript-auto-save=0 saved %v before the chat ended", saved)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if r, err := chat.Disconnect(t.Context()); err != nil || !r.OK() {
			t.Fatalf("disconnect: %v %+v", err, r)
		}
		harness.Eventually(t, "the final save", 15*time.Second, func() error {
			saved, tr, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err != nil {
				return err
			}
			if strings.Join(saved, ",") != "m0,m1,m2" || tr == nil || !tr.Ended {
				return fmt.Errorf("saved %v (transcript %+v)", saved, tr)
			}
			return nil
		})
	})
	for _, mode := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d saves after every message", mode), func(t *testing.T) {
			c := harness.StartCluster(t, harness.Options{CoreArgs: []string{fmt.Sprintf("--transcript-auto-save=%d", mode)}})
			chat := c.Customer().MustStart(t, "Ann")
			var want []string
			for i := range 3 {
				text := fmt.Sprintf("m%d", i)
				mustSend(t, chat, text)
				want = append(want, text)
				harness.Eventually(t, text+" saved while the chat is live", 10*time.Second, func() error {
					saved, tr, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
					if err != nil {
						return err
					}
					if strings.Join(saved, ",") != strings.Join(want, ",") {
						return fmt.Errorf("saved %v, want %v", saved, want)
					}
					if tr.Ended {
						return errors.New("transcript marked ended while the chat is live")
					}
					return nil
				})
			}
			msgs, _, err := chat.Transcript(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			notices := 0
			for _, m := range msgs {
				if m.Type == "TranscriptSaved" {
					notices++
				}
			}
			switch {
			case mode == 1 && notices > 0:
				t.Errorf("transcript-auto-save=1 sent %d save notices", notices)
			case mode == 2 && notices == 0:
				t.Errorf("transcript-auto-save=2 sent no save notice: %+v", msgs)
			}
		})
	}
}

// TestSaveOnErrorUnderNonRecoverableUCS checks transcript-save-on-error
// close and continue when UCS answers non-recoverable errors.
func TestSaveOnErrorUnderNonRecoverableUCS(t *testing.T) {
	t.Run("close ends the chat", func(t *testing.T) {
		c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--transcript-auto-save=2", "--transcript-save-on-error=close"}})
		chat := c.Customer().MustStart(t, "Ann")
		mustSend(t, chat, "before")
		harness.Eventually(t, "first save", 10*time.Second, func() error {
			saved, _, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err == nil && len(saved) != 1 {
				err = fmt.Errorf("saved %v", saved)
			}
			return err
		})
		if err := c.UCS().SetFaults(t.Context(), c.AdminToken(), ucsmock.Faults{NonRecoverable: true}); err != nil {
			t.Fatal(err)
		}
		mustSend(t, chat, "during")
		harness.Eventually(t, "the chat closed", 15*time.Second, func() error {
			r, err := chat.Refresh(t.Context(), 1)
			if err != nil {
				return err
			}
			if !r.ChatEnded {
				return fmt.Errorf("chat still open: %s", r.Raw)
			}
			return nil
		})
		msgs, _, _ := chat.Transcript(t.Context())
		failNotice := false
		for _, m := range msgs {
			failNotice = failNotice || m.Type == "TranscriptSaveFailed"
		}
		if !failNotice {
			t.Errorf("transcript-auto-save=2: no TranscriptSaveFailed notice: %+v", msgs)
		}
		r, err := chat.Send(t.Context(), "after", "")
		if err != nil {
			t.Fatal(err)
		}
		if r.OK() || !r.ChatEnded {
			t.Fatalf("a send to the closed chat: %s", r.Raw)
		}
		// No final save: what UCS holds is what it had before the error.
		if err := c.UCS().ClearFaults(t.Context(), c.AdminToken()); err != nil {
			t.Fatal(err)
		}
		saved, tr, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(saved, ",") != "before" || tr.Ended {
			t.Fatalf("UCS holds %v ended=%v, want only the message saved before the error", saved, tr.Ended)
		}
	})
	t.Run("continue keeps the chat open", func(t *testing.T) {
		c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--transcript-auto-save=2", "--transcript-save-on-error=continue",
			"--transcript-resend-delay=50ms"}})
		chat := c.Customer().MustStart(t, "Ann")
		if err := c.UCS().SetFaults(t.Context(), c.AdminToken(), ucsmock.Faults{NonRecoverable: true}); err != nil {
			t.Fatal(err)
		}
		mustSend(t, chat, "during")
		harness.Eventually(t, "a save-fail notice", 15*time.Second, func() error {
			msgs, _, err := chat.Transcript(t.Context())
			if err != nil {
				return err
			}
			for _, m := range msgs {
				if m.Type == "TranscriptSaveFailed" {
					return nil
				}
			}
			return errors.New("no TranscriptSaveFailed yet")
		})
		mustSend(t, chat, "still open")
		if err := c.UCS().ClearFaults(t.Context(), c.AdminToken()); err != nil {
			t.Fatal(err)
		}
		mustSend(t, chat, "after")
		harness.Eventually(t, "everything saved once UCS recovers", 20*time.Second, func() error {
			saved, _, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err == nil && strings.Join(saved, ",") != "during,still open,after" {
				err = fmt.Errorf("saved %v", saved)
			}
			return err
		})
	})
}

// TestSaveResendsAndBreaker: recoverable UCS errors are resent exactly
// transcript-resend-attempts times per save; an outage opens the breaker,
// which recovers once UCS does, and the transcript catches up. Messages are
// delivered throughout.
func TestSaveResendsAndBreaker(t *testing.T) {
	t.Run("resend attempts", func(t *testing.T) {
		c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--transcript-resend-attempts=3",
			"--transcript-resend-delay=40ms", "--transcript-breaker-failures=1000"}})
		chat := c.Customer().MustStart(t, "Ann")
		if err := c.UCS().SetFaults(t.Context(), c.AdminToken(), ucsmock.Faults{RecoverableErrorRate: 1}); err != nil {
			t.Fatal(err)
		}
		mustSend(t, chat, "unlucky")
		var resends, exhausted float64
		harness.Eventually(t, "a save out of resends", 15*time.Second, func() error {
			exhausted = c.Metric("core-a", "hachat_core_transcript_resends_exhausted_total")
			resends = c.Metric("core-a", "hachat_core_transcript_resend_attempts_total")
			if exhausted < 1 {
				return fmt.Errorf("%v saves out of resends, %v resends", exhausted, resends)
			}
			return nil
		})
		if resends < 3*exhausted || resends > 3*exhausted+3 {
			t.Fatalf("%v resends for %v saves out of resends with transcript-resend-attempts=3", resends, exhausted)
		}
		// Delivery never waited for UCS.
		msgs, _, err := chat.Transcript(t.Context())
		if err != nil || countText(msgs, "unlucky") != 1 {
			t.Fatalf("message not delivered while UCS fails: %v %+v", err, msgs)
		}
		if err := c.UCS().ClearFaults(t.Context(), c.AdminToken()); err != nil {
			t.Fatal(err)
		}
		mustSend(t, chat, "lucky")
		harness.Eventually(t, "the transcript catches up", 20*time.Second, func() error {
			saved, _, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err == nil && strings.Join(saved, ",") != "unlucky,lucky" {
				err = fmt.Errorf("saved %v", saved)
			}
			return err
		})
		// Saved in the end: a retry that succeeds is not a give-up.
		if n := c.Metric("core-a", "hachat_core_transcript_save_failures_total"); n != 0 {
			t.Errorf("%v saves counted as given up, but the transcript is complete", n)
		}
	})
	t.Run("breaker opens and recovers", func(t *testing.T) {
		c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--transcript-resend-attempts=2",
			"--transcript-resend-delay=30ms", "--transcript-breaker-failures=3", "--transcript-breaker-timeout=300ms"}})
		gms := c.Customer()
		chat := gms.MustStart(t, "Ann")
		if err := c.UCS().SetFaults(t.Context(), c.AdminToken(), ucsmock.Faults{Outage: true}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i := range 5 {
			mustSend(t, chat, fmt.Sprintf("outage %d", i))
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("5 sends took %s during a UCS outage: saves block delivery", took)
		}
		harness.Eventually(t, "the breaker opens", 15*time.Second, func() error {
			state := c.Metric("core-a", "hachat_core_transcript_breaker_state")
			open := c.Metric("core-a", "hachat_core_transcript_saves_total", `result="breaker_open"`)
			if state != 2 && open == 0 {
				return fmt.Errorf("breaker state %v, %v refused saves", state, open)
			}
			return nil
		})
		if err := c.UCS().ClearFaults(t.Context(), c.AdminToken()); err != nil {
			t.Fatal(err)
		}
		mustSend(t, chat, "after")
		harness.Eventually(t, "the breaker closes and the transcript catches up", 30*time.Second, func() error {
			saved, _, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err != nil {
				return err
			}
			if got := strings.Join(saved, ","); got != "outage 0,outage 1,outage 2,outage 3,outage 4,after" {
				return fmt.Errorf("saved %v", saved)
			}
			if state := c.Metric("core-a", "hachat_core_transcript_breaker_state"); state != 0 {
				return fmt.Errorf("breaker state %v", state)
			}
			return nil
		})
	})
}

// TestUCSKill9: acknowledged saves survive kill -9 of ucsmock; while it is
// down chats go on, and once it is back the saver catches up.
func TestUCSKill9(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--transcript-resend-delay=50ms", "--transcript-breaker-timeout=300ms"}})
	chat := c.Customer().MustStart(t, "Ann")
	for i := range 3 {
		mustSend(t, chat, fmt.Sprintf("saved %d", i))
	}
	want := "saved 0,saved 1,saved 2"
	waitSaved := func(want string) {
		t.Helper()
		harness.Eventually(t, "UCS holds "+want, 30*time.Second, func() error {
			saved, _, err := savedMessages(t.Context(), c.UCS(), chat.ChatID)
			if err == nil && strings.Join(saved, ",") != want {
				err = fmt.Errorf("saved %v", saved)
			}
			return err
		})
	}
	waitSaved(want)
	c.Kill("ucs", syscall.SIGKILL)
	mustSend(t, chat, "while UCS is dead") // delivery never waits for UCS
	c.Restart("ucs")
	waitSaved(want + ",while UCS is dead")
}
