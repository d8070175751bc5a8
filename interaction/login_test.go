package interaction

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/interaction/auth"
	"github.com/hachat/hachat/interaction/auth/oidctest"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// syncBuf is a log sink safe for the server's goroutines, which reads
// back the JSON records written to it.
type syncBuf struct {
	telemetrytest.LogBuffer
}

// records returns the JSON log records whose msg is msg.
func (b *syncBuf) records(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

func loggedEnv(t *testing.T, mod func(*Config)) (*env, *syncBuf) {
	logs := &syncBuf{}
	tel := telemetry.Discard()
	tel.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	return newEnvClient(t, false, tel, mod), logs
}

// TestLoginProvesCredential: the role comes from the account, never from
// the request; no password, a wrong one and an unknown account are all 401
// in the documented error shape and logged as security events.
func TestLoginProvesCredential(t *testing.T) {
	e, logs := loggedEnv(t, nil)
	// The attack of issue 7: a made-up supervisor without a password.
	code, body := e.do("POST", "/agent/v1/login", "", `{"agentId":"mallory","role":"supervisor"}`)
	if code != http.StatusBadRequest || body["code"] != "badRequest" {
		t.Fatalf("login with a role in the request: %d %v", code, body)
	}
	for _, c := range []struct{ name, body string }{
		{"no password", `{"agentId":"s"}`},
		{"empty password", `{"agentId":"s","password":""}`},
		{"wrong password", `{"agentId":"s","password":"pw-a-secret"}`},
		{"unknown account", `{"agentId":"mallory","password":"pw-s-secret"}`},
	} {
		code, body := e.do("POST", "/agent/v1/login", "", c.body)
		if code != http.StatusUnauthorized || body["code"] != "unauthorized" || body["error"] == "" {
			t.Errorf("%s: %d %v, want 401 unauthorized", c.name, code, body)
		}
	}
	// Wrong password and unknown account answer alike.
	_, wrong := e.do("POST", "/agent/v1/login", "", `{"agentId":"s","password":"x"}`)
	_, unknown := e.do("POST", "/agent/v1/login", "", `{"agentId":"nobody","password":"x"}`)
	if wrong["error"] != unknown["error"] {
		t.Errorf("a wrong password (%v) and an unknown account (%v) answer differently", wrong["error"], unknown["error"])
	}
	refusals := logs.records("request refused")
	if len(refusals) < 5 {
		t.Fatalf("%d security events logged, want one per refused login: %v", len(refusals), refusals)
	}
	for _, r := range refusals {
		if r["security"] != true || r["status"] != float64(401) || r["path"] != "/agent/v1/login" || r["remote"] != "127.0.0.1" {
			t.Errorf("security event %v lacks security=true, status, path or remote", r)
		}
	}
	// The account's role, and the account's nickname unless one is asked for.
	out := e.mustDo("POST", "/agent/v1/login", "", map[string]string{"agentId": "s", "password": testPassword("s")})
	if ag := out["agent"].(map[string]any); ag["role"] != "supervisor" || ag["nickname"] != "s" {
		t.Fatalf("login of s: %v", ag)
	}
	out = e.mustDo("POST", "/agent/v1/login", "", map[string]string{"agentId": "a", "password": testPassword("a")})
	if ag := out["agent"].(map[string]any); ag["role"] != "agent" {
		t.Fatalf("login of a: %v", ag)
	}
	ta := out["token"].(string)
	if code, _ := e.do("GET", "/agent/v1/chats", ta, nil); code != http.StatusForbidden {
		t.Fatalf("an agent lists chats: %d, want 403", code)
	}
	last := logs.records("request refused")
	if r := last[len(last)-1]; r["status"] != float64(403) || r["agent"] != "a" || r["path"] != "/agent/v1/chats" {
		t.Fatalf("the 403 was not logged as a security event of agent a: %v", r)
	}
}

// TestFailedLoginsSlowed: past the free failures, attempts for the account
// are answered 429 with Retry-After without checking the password, even
// the right one, until the wait is over.
func TestFailedLoginsSlowed(t *testing.T) {
	e, _ := loggedEnv(t, func(c *Config) {
		c.LoginFailuresPerAccount = 2
		c.LoginBackoff = 700 * time.Millisecond
		c.LoginBackoffMax = 700 * time.Millisecond
	})
	for i := range 3 {
		if code, body := e.do("POST", "/agent/v1/login", "", `{"agentId":"a","password":"guess"}`); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d %v", i, code, body)
		}
	}
	req, _ := http.NewRequest("POST", e.url+"/agent/v1/login", strings.NewReader(`{"agentId":"a","password":"`+testPassword("a")+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("right password right after 3 failures: %d, want 429", resp.StatusCode)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	// Another account from the same client is not slowed (address allows 20).
	e.login("b", "agent")
	time.Sleep(800 * time.Millisecond)
	e.login("a", "agent")
}

// TestSessionsEndAndLogoutRevokes: an idle session expires; logout revokes
// every token of the agent and ends its push channel.
func TestSessionsEndAndLogoutRevokes(t *testing.T) {
	e, _ := loggedEnv(t, func(c *Config) { c.SessionIdle = time.Second })
	ta := e.login("a", "agent")
	e.mustDo("POST", "/agent/v1/ready", ta, nil)
	tb := e.login("b", "agent")
	for range 5 { // activity keeps the session alive
		time.Sleep(300 * time.Millisecond)
		e.mustDo("GET", "/agent/v1/state", tb, nil)
	}
	if code, _ := e.do("GET", "/agent/v1/state", ta, nil); code != http.StatusUnauthorized {
		t.Fatalf("an idle session still works: %d", code)
	}
	// The sweeper logged the agent without a session out of routing: no
	// chat is offered to a desktop nobody watches.
	e.waitFor("a logged out of routing", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		_, ok := e.srv.router.Agent("a")
		return !ok
	})
	e.mustDo("POST", "/agent/v1/logout", tb, nil)
	if code, _ := e.do("GET", "/agent/v1/state", tb, nil); code != http.StatusUnauthorized {
		t.Fatalf("token after logout: %d, want 401", code)
	}
}

// TestLogoutEndsOtherTabs: logout revokes the agent's other tokens too.
func TestLogoutEndsOtherTabs(t *testing.T) {
	e := newEnv(t, nil)
	t1 := e.login("a", "agent")
	t2 := e.login("a", "agent")
	e.mustDo("POST", "/agent/v1/logout", t1, nil)
	for _, tok := range []string{t1, t2} {
		if code, _ := e.do("GET", "/agent/v1/state", tok, nil); code != http.StatusUnauthorized {
			t.Fatalf("a token of a logged-out agent: %d, want 401", code)
		}
	}
}

// TestSecurityHeaders: the desktop and the API forbid framing, sniffing and
// foreign scripts.
func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, nil)
	for _, path := range []string{"/agent", "/agent/app.js", "/agent/v1/state"} {
		resp, err := http.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") ||
			h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: headers %v", path, h)
		}
	}
}

// TestRemovedAccountLosesSession: removing an account ends its sessions.
func TestRemovedAccountLosesSession(t *testing.T) {
	e := newEnv(t, nil)
	ta := e.login("a", "agent")
	time.Sleep(10 * time.Millisecond) // a distinct modification time
	if err := auth.RemoveAccount(e.srv.cfg.Accounts, "a"); err != nil {
		t.Fatal(err)
	}
	if code, _ := e.do("GET", "/agent/v1/state", ta, nil); code != http.StatusUnauthorized {
		t.Fatalf("session of a removed account: %d, want 401", code)
	}
	if code, _ := e.do("POST", "/agent/v1/login", "", map[string]string{"agentId": "a", "password": testPassword("a")}); code != http.StatusUnauthorized {
		t.Fatalf("login of a removed account: %d, want 401", code)
	}
}

func oidcEnv(t *testing.T) (*env, *oidctest.Issuer) {
	is := oidctest.NewIssuer(t, "hachat-desktop")
	e := newEnv(t, func(c *Config) {
		c.Accounts = ""
		c.OIDCIssuer = is.URL
		c.OIDCClientID = is.ClientID
		c.OIDCRoleClaim = "groups"
		c.OIDCRedirectURL = "http://placeholder/agent/v1/oidc/callback"
	})
	return e, is
}

// TestOIDCBearerLogin: an identity provider's ID token logs in with the
// role of its claim; forged and expired tokens are 401; the key rotates.
func TestOIDCBearerLogin(t *testing.T) {
	e, is := oidcEnv(t)
	login := func(tok string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", e.url+"/agent/v1/login", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	claims := func(user, group string, ttl time.Duration) map[string]any {
		return is.Claims(user+"-sub", ttl, map[string]any{"preferred_username": user, "groups": []string{group}})
	}
	code, out := login(is.Sign(claims("olga", "supervisor", time.Minute)))
	if code != http.StatusOK || out["agent"].(map[string]any)["role"] != "supervisor" {
		t.Fatalf("oidc supervisor login: %d %v", code, out)
	}
	tok := out["token"].(string)
	e.mustDo("GET", "/agent/v1/chats", tok, nil)
	if code, _ := login(is.SignForeign(claims("olga", "supervisor", time.Minute))); code != http.StatusUnauthorized {
		t.Fatalf("forged token: %d, want 401", code)
	}
	if code, _ := login(is.Sign(claims("olga", "supervisor", -time.Minute))); code != http.StatusUnauthorized {
		t.Fatalf("expired token: %d, want 401", code)
	}
	if code, _ := login(is.Sign(claims("olga", "visitor", time.Minute))); code != http.StatusForbidden {
		t.Fatalf("token without a role: %d, want 403", code)
	}
	is.Rotate()
	if code, out := login(is.Sign(claims("pete", "agent", time.Minute))); code != http.StatusOK || out["agent"].(map[string]any)["role"] != "agent" {
		t.Fatalf("login after key rotation: %d %v", code, out)
	}
	// No accounts file: password logins are refused.
	if code, _ := e.do("POST", "/agent/v1/login", "", map[string]string{"agentId": "a", "password": "x"}); code != http.StatusUnauthorized {
		t.Fatalf("password login without accounts: %d", code)
	}
	opts := e.mustDo("GET", "/agent/v1/login-options", "", nil)
	if opts["oidc"] != true || opts["password"] != false {
		t.Fatalf("login options %v", opts)
	}
}

// TestOIDCRedirectSignIn walks the desktop's redirect sign-in with a cookie
// jar: our server → the identity provider → our callback → /agent with the
// session token in the fragment. A callback from another browser (no state
// cookie) is refused.
func TestOIDCRedirectSignIn(t *testing.T) {
	is := oidctest.NewIssuer(t, "hachat-desktop")
	var e *env
	e = newEnv(t, func(c *Config) {
		c.OIDCIssuer = is.URL
		c.OIDCClientID = is.ClientID
		c.OIDCRedirectURL = "http://will-be-set/agent/v1/oidc/callback"
	})
	// The redirect URL must name the server's real address, known only now.
	e.srv.authn.oidc = mustOIDC(t, is, e.url+"/agent/v1/oidc/callback")
	is.SetUser(map[string]any{"sub": "u9", "preferred_username": "s", "hachat_role": "supervisor"})
	jar, _ := cookiejar.New(nil)
	var final *url.URL
	client := &http.Client{Jar: jar, CheckRedirect: func(r *http.Request, via []*http.Request) error {
		if r.URL.Path == "/agent" {
			final = r.URL
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := client.Get(e.url + "/agent/v1/oidc/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if final == nil || !strings.HasPrefix(final.Fragment, "session=") {
		t.Fatalf("sign-in did not end at /agent#session=...: %d %v", resp.StatusCode, final)
	}
	tok := strings.TrimPrefix(final.Fragment, "session=")
	st := e.mustDo("GET", "/agent/v1/state", tok, nil)
	if st["agent"].(map[string]any)["role"] != "supervisor" {
		t.Fatalf("state after sign-in: %v", st)
	}
	// A replayed or foreign callback is refused.
	if code, _ := e.do("GET", "/agent/v1/oidc/callback?state=x&code=y", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("callback without the state cookie: %d, want 401", code)
	}
}

func mustOIDC(t *testing.T, is *oidctest.Issuer, redirect string) *auth.OIDC {
	t.Helper()
	o, err := auth.NewOIDC(t.Context(), auth.OIDCConfig{Issuer: is.URL, ClientID: is.ClientID, RedirectURL: redirect})
	if err != nil {
		t.Fatal(err)
	}
	return o
}
