package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// TestCustomerEventKindsAndSaveNotices: typing, custom notice and push URL
// from the customer API reach the agent, and transcript-save-notices decides
// which of them UCS keeps (default push-url,custom,disconnect: no typing).
func TestCustomerEventKindsAndSaveNotices(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	s := c.StartSessions(t, 1)[0]
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	calls := []struct {
		action string
		params url.Values
		kind   string
	}{
		{"startTyping", nil, "TypingStarted"},
		{"stopTyping", nil, "TypingStopped"},
		{"customNotice", url.Values{"message": {"cobrowse please"}, "noticeType": {"cobrowse"}}, "Notice"},
		{"pushUrl", url.Values{"pushUrl": {"https://example.com/order/42"}}, "PushUrl"},
	}
	for _, call := range calls {
		r, err := s.Customer.Call(ctx, call.action, call.params)
		if err != nil || !r.OK() {
			t.Fatalf("%s: %v %+v", call.action, err, r)
		}
		ev, err := s.Agent.WaitEvent(ctx, s.ChatID, func(ev harness.AgentEvent) bool { return ev.Kind == call.kind && ev.Index == r.Index })
		if err != nil {
			t.Fatalf("%s: the agent never saw a %s at index %d: %v", call.action, call.kind, r.Index, err)
		}
		if call.kind == "Notice" && ev.Attrs["noticeType"] != "cobrowse" {
			t.Errorf("notice attrs %v", ev.Attrs)
		}
		if call.kind == "PushUrl" && ev.Text != "https://example.com/order/42" {
			t.Errorf("push URL text %q", ev.Text)
		}
	}
	mustSend(t, s.Customer, "and a message")
	harness.Eventually(t, "the saved transcript", 15*time.Second, func() error {
		tr, err := c.UCS().Transcript(ctx, s.ChatID)
		if err != nil {
			return err
		}
		kinds := map[string]int{}
		for _, ev := range harness.TranscriptView(tr) {
			kinds[ev.Type]++
		}
		if kinds["Message"] != 1 || kinds["Notice"] != 1 || kinds["PushUrl"] != 1 {
			return fmt.Errorf("saved kinds %v", kinds)
		}
		if kinds["TypingStarted"]+kinds["TypingStopped"] != 0 {
			return fmt.Errorf("typing saved against transcript-save-notices: %v", kinds)
		}
		return nil
	})
	// A bad push URL is refused and changes nothing.
	r, err := s.Customer.Call(ctx, "pushUrl", url.Values{"pushUrl": {"javascript:alert(1)"}})
	if err != nil || r.HTTPStatus != http.StatusBadRequest {
		t.Errorf("javascript: push URL: %v %+v", err, r)
	}
}

// TestFlexDisconnect: a customer who stops polling is disconnected after
// flex-disconnect-timeout, which ends the chat; the agent is told.
func TestFlexDisconnect(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--flex-disconnect-timeout=1s"}})
	s := c.StartSessions(t, 1)[0]
	s.Push.Close() // an open push channel counts as polling: the customer goes quiet
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	ev, err := s.Agent.WaitEvent(ctx, s.ChatID, func(ev harness.AgentEvent) bool {
		return ev.Kind == "SessionEnded" || ev.Kind == "ParticipantLeft" && ev.From != nil && ev.From.Type == "Customer"
	})
	if err != nil {
		t.Fatalf("the idle customer was never disconnected: %v", err)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("disconnected after %s, before the 1s timeout", took)
	}
	t.Logf("agent saw %s after %s", ev.Kind, time.Since(start).Round(time.Millisecond))
	harness.Eventually(t, "the chat ended", 10*time.Second, func() error {
		r, err := s.Customer.Refresh(ctx, 1)
		if err != nil {
			return err
		}
		if !r.ChatEnded {
			return fmt.Errorf("chat not ended: %s", r.Raw)
		}
		return nil
	})
}

// TestSessionLimit: past max-sessions a start is refused with 429 and
// statusCode 1 (retry later), and creates nothing.
func TestSessionLimit(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{CoreArgs: []string{"--max-sessions=2"}})
	gms := c.Customer()
	gms.MustStart(t, "one")
	gms.MustStart(t, "two")
	chat, r, err := gms.Start(t.Context(), url.Values{"nickname": {"three"}})
	if err != nil {
		t.Fatal(err)
	}
	if chat != nil || r.HTTPStatus != http.StatusTooManyRequests || r.StatusCode != 1 || len(r.Errors) == 0 {
		t.Fatalf("third start: %s", r.Raw)
	}
	if !strings.Contains(strings.ToLower(r.Errors[0].Advice), "retry") {
		t.Errorf("unclear advice: %q", r.Errors[0].Advice)
	}
	if n := c.Metric("core-a", "hachat_core_sessions_live"); n != 2 {
		t.Errorf("%v live sessions after a refused start, want 2", n)
	}
}
