package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// TestCustomerAndAgentChatBothWays: concurrent sessions between customers
// (customer API) and agents (agent API) exchange numbered messages both
// ways; every acknowledged message is in both views exactly once, in
// order, and in the UCS transcript. The customer's push channel delivers
// the agent's messages live.
func TestCustomerAndAgentChatBothWays(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	sessions := c.StartSessions(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	// Live both ways on the first session, before the workload.
	first := sessions[0]
	chat := first.Customer
	stream, err := chat.Events(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if r, err := chat.Send(ctx, "hello agent", "hi-1"); err != nil || !r.OK() {
		t.Fatalf("customer send: %v %+v", err, r)
	}
	agent := first.Agent
	if _, err := agent.WaitText(ctx, first.ChatID, "hello agent"); err != nil {
		t.Fatal(err)
	}
	idx, _, err := agent.Send(ctx, first.ChatID, "hello customer", "hi-2")
	if err != nil || idx == 0 {
		t.Fatalf("agent send: %d %v", idx, err)
	}
	for {
		ev, err := stream.NextMessage(ctx)
		if err != nil {
			t.Fatalf("customer push channel: %v", err)
		}
		if ev.Event != "" {
			continue
		}
		m, err := ev.Message()
		if err != nil {
			t.Fatalf("push event %q: %v", ev.Data, err)
		}
		if m.Type == "Message" && m.Text == "hello customer" {
			if m.Index != idx || m.From.Type != "Agent" {
				t.Fatalf("pushed %+v, want index %d from an Agent", m, idx)
			}
			break
		}
	}

	st, err := agent.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.CoreConnected {
		t.Errorf("agent state says coreConnected=false on a healthy cluster: %+v", st)
	}

	rec := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: 10}).Wait()
	if want := 3 * 2 * 10; rec.Acked() != want {
		t.Errorf("acknowledged %d of %d messages on a healthy cluster", rec.Acked(), want)
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: c.UCS()})
}

// TestVisibility: a coaching supervisor's messages reach the agent only; a
// monitoring supervisor is not announced to the customer and cannot send;
// the customer never receives internal or monitor events, in the API, the
// push channel or (for internal messages) anywhere but the agent side.
func TestVisibility(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	sessions := c.StartSessions(t, 1)
	s := sessions[0]
	chat := s.Customer
	agent := s.Agent
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	api := c.Agents()
	coach := api.MustLogin(t, "sup-coach", "supervisor")
	monitor := api.MustLogin(t, "sup-monitor", "supervisor")
	if err := monitor.Chat(ctx, s.ChatID, "monitor", nil); err != nil {
		t.Fatalf("monitor: %v", err)
	}
	if err := coach.Chat(ctx, s.ChatID, "coach", nil); err != nil {
		t.Fatalf("coach: %v", err)
	}
	idx, _, err := coach.Send(ctx, s.ChatID, "psst: offer the discount", "coach-1")
	if err != nil {
		t.Fatalf("coach send: %v", err)
	}
	_, _, err = monitor.Send(ctx, s.ChatID, "I should not be heard", "mon-1")
	var ae *harness.AgentError
	if !errors.As(err, &ae) || ae.HTTPStatus < 400 || ae.HTTPStatus >= 500 {
		t.Fatalf("a monitoring supervisor's send: %v, want a 4xx refusal", err)
	}
	if r, err := chat.Send(ctx, "can I get a discount?", "c-1"); err != nil || !r.OK() {
		t.Fatalf("customer send: %v %+v", err, r)
	}
	ev, err := agent.WaitText(ctx, s.ChatID, "psst: offer the discount")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Index != idx || ev.Visibility != "internal" {
		t.Fatalf("agent got the coaching message as %+v, want index %d visibility internal", ev, idx)
	}
	if _, err := monitor.WaitText(ctx, s.ChatID, "can I get a discount?"); err != nil {
		t.Fatalf("the monitor does not see the chat: %v", err)
	}
	msgs, _, err := chat.Transcript(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if strings.Contains(m.Text, "psst") || strings.Contains(m.Text, "not be heard") {
			t.Errorf("customer sees %+v", m)
		}
		if m.Index == idx {
			t.Errorf("customer sees index %d, the coaching message: %+v", idx, m)
		}
		if m.Type == "ParticipantJoined" && (m.From.Nickname == "sup-monitor" || m.From.Nickname == "sup-coach") {
			// A coach is seen by the agent only; a monitor by no customer.
			t.Errorf("customer is told a supervisor joined: %+v", m)
		}
	}
	// The push channel filters the same way.
	stream, err := chat.Events(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for {
		ev, err := stream.NextMessage(ctx)
		if err != nil {
			t.Fatalf("push channel: %v", err)
		}
		if ev.Event != "" {
			continue
		}
		m, _ := ev.Message()
		if strings.Contains(m.Text, "psst") || m.Index == idx {
			t.Fatalf("push channel delivered the coaching message to the customer: %+v", m)
		}
		if m.Text == "can I get a discount?" {
			break
		}
	}
}

// TestAgentAPIBadInput: the agent API refuses bad requests clearly and they
// change nothing.
func TestAgentAPIBadInput(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	sessions := c.StartSessions(t, 1)
	s := sessions[0]
	agent := s.Agent
	ctx := t.Context()
	evs := agent.Events(s.ChatID)
	before := evs[len(evs)-1].Index // the agent's own join, which StartSessions waited for
	api := c.Agents()
	path := "/agent/v1/chats/" + s.ChatID + "/send"
	tests := []struct {
		name   string
		method string
		path   string
		token  string
		body   any
		want   int
	}{
		{"no token", http.MethodPost, path, "", map[string]string{"message": "x"}, 401},
		{"bad token", http.MethodPost, path, "nope", map[string]string{"message": "x"}, 401},
		{"malformed JSON", http.MethodPost, path, agent.Token, []byte(`{"message":`), 400},
		{"unknown field", http.MethodPost, path, agent.Token, []byte(`{"message":"x","evil":1}`), 400},
		{"empty message", http.MethodPost, path, agent.Token, map[string]string{"message": ""}, 400},
		{"oversized message", http.MethodPost, path, agent.Token, map[string]string{"message": strings.Repeat("x", 5000)}, 400},
		{"chat not held", http.MethodPost, "/agent/v1/chats/someone-elses/send", agent.Token, map[string]string{"message": "x"}, 404},
		{"login without id", http.MethodPost, "/agent/v1/login", "", map[string]string{"nickname": "x"}, 400},
		{"login bad role", http.MethodPost, "/agent/v1/login", "", map[string]string{"agentId": "a1", "role": "king"}, 400},
		{"no such route", http.MethodPost, "/agent/v1/explode", agent.Token, nil, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := api.Do(ctx, tt.method, tt.path, tt.token, tt.body, nil)
			var ae *harness.AgentError
			if !errors.As(err, &ae) {
				t.Fatalf("want an agent API error, got %v", err)
			}
			if ae.HTTPStatus != tt.want && !(tt.name == "chat not held" && ae.HTTPStatus == 403) {
				t.Fatalf("HTTP %d (%s), want %d", ae.HTTPStatus, ae.Message, tt.want)
			}
			if ae.Message == "" || ae.Code == "" {
				t.Fatalf("unclear error: %+v", ae)
			}
		})
	}
	// Nothing changed: a good send now gets the next index after what the
	// agent had seen.
	idx, _, err := agent.Send(ctx, s.ChatID, "still fine", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.WaitText(ctx, s.ChatID, "still fine"); err != nil {
		t.Fatal(err)
	}
	if idx != before+1 {
		t.Fatalf("bad requests changed the chat: the last index was %d, the next send got %d (%v)", before, idx, fmt.Sprint(agent.Events(s.ChatID)))
	}
}
