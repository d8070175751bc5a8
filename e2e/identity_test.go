package e2e

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// wantRefused asserts an agent API error with status and short code.
func wantRefused(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var ae *harness.AgentError
	if !errors.As(err, &ae) || ae.HTTPStatus != status || ae.Code != code {
		t.Errorf("%s: %v, want HTTP %d %s", what, err, status, code)
	}
}

// TestAgentIdentity runs issue 7's attacks against real processes: logins
// without a password, with a wrong one, or with a role of one's choosing
// are refused; an agent cannot read or act on another agent's chat; only a
// supervisor lists, monitors and coaches; repeated failed logins are slowed.
func TestAgentIdentity(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	api := c.Agents()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	login := func(body map[string]string) error {
		return api.Do(ctx, http.MethodPost, "/agent/v1/login", "", body, nil)
	}

	t.Run("login needs the right password", func(t *testing.T) {
		wantRefused(t, "no password", login(map[string]string{"agentId": "ada"}), 401, "unauthorized")
		wantRefused(t, "wrong password", login(map[string]string{"agentId": "ada", "password": api.Password("grace")}), 401, "unauthorized")
		wantRefused(t, "unknown account", login(map[string]string{"agentId": "mallory", "password": "x"}), 401, "unauthorized")
		wantRefused(t, "role from the request", login(map[string]string{"agentId": "mallory", "role": "supervisor"}), 400, "badRequest")
		wantRefused(t, "own password, supervisor role asked", login(map[string]string{"agentId": "ada", "password": api.Password("ada"), "role": "supervisor"}), 400, "badRequest")
	})

	// agent-0 holds a chat; a1 is another logged-in agent.
	s := c.StartSessions(t, 1)[0]
	owner := s.Agent
	other := api.MustLogin(t, "a1", "agent")
	sup := api.MustLogin(t, "sam", "supervisor")

	t.Run("an agent cannot read or act on another agent's chat", func(t *testing.T) {
		if _, _, err := other.Send(ctx, s.ChatID, "please confirm your CVV here", "evil-1"); err == nil {
			t.Fatal("another agent sent into the chat")
		} else {
			wantRefused(t, "send", err, 403, "forbidden")
		}
		for _, action := range []string{"typing", "pushUrl", "transfer", "leave", "close"} {
			var body any
			switch action {
			case "typing":
				body = map[string]bool{"typing": true}
			case "pushUrl":
				body = map[string]string{"url": "https://evil.example/"}
			case "transfer":
				body = map[string]string{"toAgentId": "a1"}
			}
			wantRefused(t, action, other.Chat(ctx, s.ChatID, action, body), 403, "forbidden")
		}
		wantRefused(t, "accept", other.Accept(ctx, s.ChatID), 404, "notFound")
		// The owner's chat goes on; the other agent sees none of it.
		if r, err := s.Customer.Send(ctx, "my card is 4111 1111 1111 1111", "card-1"); err != nil || !r.OK() {
			t.Fatalf("customer send: %v %+v", err, r)
		}
		if _, err := owner.WaitText(ctx, s.ChatID, "my card is 4111 1111 1111 1111"); err != nil {
			t.Fatal(err)
		}
		st, err := other.State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Chats) != 0 || len(other.Events(s.ChatID)) != 0 {
			t.Fatalf("another agent sees the chat: state %+v, %d events", st.Chats, len(other.Events(s.ChatID)))
		}
		msgs, _, err := s.Customer.Transcript(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.Text == "please confirm your CVV here" {
				t.Fatal("the other agent's message reached the customer")
			}
		}
	})

	t.Run("only a supervisor lists, monitors and coaches", func(t *testing.T) {
		for _, tok := range []string{owner.Token, other.Token} {
			wantRefused(t, "agent lists", api.Do(ctx, http.MethodGet, "/agent/v1/chats", tok, nil, nil), 403, "forbidden")
			wantRefused(t, "agent monitors", api.Do(ctx, http.MethodPost, "/agent/v1/chats/"+s.ChatID+"/monitor", tok, nil, nil), 403, "forbidden")
			wantRefused(t, "agent coaches", api.Do(ctx, http.MethodPost, "/agent/v1/chats/"+s.ChatID+"/coach", tok, nil, nil), 403, "forbidden")
		}
		var list struct {
			Chats []struct {
				ChatID string `json:"chatId"`
			} `json:"chats"`
		}
		if err := api.Do(ctx, http.MethodGet, "/agent/v1/chats", sup.Token, nil, &list); err != nil || len(list.Chats) != 1 || list.Chats[0].ChatID != s.ChatID {
			t.Fatalf("supervisor list: %+v %v", list, err)
		}
		if err := api.Do(ctx, http.MethodPost, "/agent/v1/chats/"+s.ChatID+"/monitor", sup.Token, nil, nil); err != nil {
			t.Fatalf("supervisor monitors: %v", err)
		}
		if _, err := sup.WaitText(ctx, s.ChatID, "my card is 4111 1111 1111 1111"); err != nil {
			t.Fatalf("monitoring supervisor: %v", err)
		}
		if err := api.Do(ctx, http.MethodPost, "/agent/v1/chats/"+s.ChatID+"/coach", sup.Token, nil, nil); err != nil {
			t.Fatalf("supervisor coaches: %v", err)
		}
		wantRefused(t, "no token", api.Do(ctx, http.MethodGet, "/agent/v1/chats", "", nil, nil), 401, "unauthorized")
		wantRefused(t, "made-up token", api.Do(ctx, http.MethodGet, "/agent/v1/chats", "0123456789abcdef", nil, nil), 401, "unauthorized")
	})

	t.Run("logout revokes the token", func(t *testing.T) {
		a3 := api.MustLogin(t, "a3", "agent")
		if err := api.Do(ctx, http.MethodPost, "/agent/v1/logout", a3.Token, nil, nil); err != nil {
			t.Fatal(err)
		}
		_, err := a3.State(ctx)
		wantRefused(t, "state after logout", err, 401, "unauthorized")
	})

	t.Run("repeated failed logins are slowed", func(t *testing.T) {
		// Defaults: 5 failures free, then 1 s doubling.
		for i := range 6 {
			wantRefused(t, "failure "+strconv.Itoa(i), login(map[string]string{"agentId": "grace", "password": "guess-" + strconv.Itoa(i)}), 401, "unauthorized")
		}
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, api.Base+"/agent/v1/login",
			strings.NewReader(`{"agentId":"grace","password":"`+api.Password("grace")+`"}`))
		resp, err := api.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("the right password right after 6 failures: %d (Retry-After %q), want 429 with Retry-After",
				resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		// After the wait the right password works again.
		harness.Eventually(t, "grace's login after the wait", 5*time.Second, func() error {
			return login(map[string]string{"agentId": "grace", "password": api.Password("grace")})
		})
		if time.Since(start) < 500*time.Millisecond {
			t.Fatalf("the throttle let grace in after %v", time.Since(start))
		}
	})

	t.Run("the desktop carries security headers", func(t *testing.T) {
		resp, err := api.HTTP.Get(api.Base + "/agent")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Content-Type-Options") != "nosniff" ||
			resp.Header.Get("Content-Security-Policy") == "" {
			t.Fatalf("headers of /agent: %v", resp.Header)
		}
	})
}
