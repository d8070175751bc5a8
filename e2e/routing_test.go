package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// TestAgentRoutingTransferClose: an offer not accepted in time goes to the
// next ready agent; the agent who took the chat transfers it to a third
// one, who replies and closes it; the customer sees all of it, the old
// agent can no longer send, and UCS gets the final save.
func TestAgentRoutingTransferClose(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Tune: func(p demo.Plan) demo.Plan {
		return p.With("interaction", "--offer-timeout=700ms")
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	api := c.Agents()
	a1 := api.MustLogin(t, "a1", "agent")
	if err := a1.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	a2 := api.MustLogin(t, "a2", "agent")
	if err := a2.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	a3 := api.MustLogin(t, "a3", "agent") // logged in, not ready: a transfer target
	chat := c.Customer().MustStart(t, "Grace")

	// a1 is idle longest: the offer goes to a1, who lets it time out.
	if err := a1.WaitOffer(ctx, chat.ChatID); err != nil {
		t.Fatal(err)
	}
	if err := a2.WaitOffer(ctx, chat.ChatID); err != nil {
		t.Fatalf("the timed-out offer never reached the next ready agent: %v", err)
	}
	if n := a1.Seen("offerWithdrawn"); n < 1 {
		t.Errorf("a1 was not told its offer was withdrawn")
	}
	if err := a1.Accept(ctx, chat.ChatID); err == nil {
		t.Errorf("a1 accepted an offer that had timed out")
	}
	if err := a2.Accept(ctx, chat.ChatID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a2.Send(ctx, chat.ChatID, "a2 here", "a2-1"); err != nil {
		t.Fatal(err)
	}

	// a2 transfers to a3.
	if err := a2.Chat(ctx, chat.ChatID, "transfer", map[string]string{"toAgentId": "a3"}); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if _, err := a3.WaitText(ctx, chat.ChatID, "a2 here"); err != nil {
		t.Fatalf("a3 did not get the transcript: %v", err)
	}
	if _, _, err := a3.Send(ctx, chat.ChatID, "a3 here", "a3-1"); err != nil {
		t.Fatal(err)
	}
	_, _, err := a2.Send(ctx, chat.ChatID, "a2 again", "a2-2")
	var ae *harness.AgentError
	if !errors.As(err, &ae) || ae.HTTPStatus < 400 || ae.HTTPStatus >= 500 {
		t.Errorf("a2 sent after transferring the chat away: %v", err)
	}
	harness.Eventually(t, "the customer sees both agents and the hand-over", 10*time.Second, func() error {
		msgs, _, err := chat.Transcript(ctx)
		if err != nil {
			return err
		}
		var a2Left, a3Joined bool
		for _, m := range msgs {
			a2Left = a2Left || m.Type == "ParticipantLeft" && m.From.Nickname == "a2"
			a3Joined = a3Joined || m.Type == "ParticipantJoined" && m.From.Nickname == "a3"
		}
		if countText(msgs, "a2 here") != 1 || countText(msgs, "a3 here") != 1 || countText(msgs, "a2 again") != 0 || !a2Left || !a3Joined {
			return fmt.Errorf("customer transcript: %+v", msgs)
		}
		return nil
	})

	// a3 closes the chat: it ends for everyone and the final save lands.
	if err := a3.Chat(ctx, chat.ChatID, "close", nil); err != nil {
		t.Fatalf("close: %v", err)
	}
	harness.Eventually(t, "the chat ended for the customer", 10*time.Second, func() error {
		r, err := chat.Refresh(ctx, 1)
		if err != nil {
			return err
		}
		if !r.ChatEnded {
			return fmt.Errorf("not ended: %s", r.Raw)
		}
		return nil
	})
	harness.Eventually(t, "the final save", 15*time.Second, func() error {
		saved, tr, err := savedMessages(ctx, c.UCS(), chat.ChatID)
		if err != nil {
			return err
		}
		if tr == nil || !tr.Ended || len(saved) != 2 {
			return fmt.Errorf("saved %v (ended %v)", saved, tr != nil && tr.Ended)
		}
		return nil
	})
}
