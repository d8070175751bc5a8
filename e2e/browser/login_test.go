package browser

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/interaction/auth/oidctest"
)

// TestAgentDesktopLogin drives the desktop's login form in Chromium against
// a real interaction process that knows both an accounts file and an
// identity provider (a real OIDC issuer the test runs): a wrong password
// shows an error and no desk; the right one opens the desk with the
// account's role; "sign in with your identity provider" goes to the issuer
// and back, and opens the desk with the token's role (supervisor).
func TestAgentDesktopLogin(t *testing.T) {
	is := oidctest.NewIssuer(t, "hachat-desktop")
	is.SetUser(map[string]any{"sub": "u-olga", "preferred_username": "olga", "name": "Olga", "hachat_role": "supervisor"})
	c := harness.StartCluster(t, harness.Options{Tune: func(p demo.Plan) demo.Plan {
		ia, _ := p.Part("interaction")
		return p.With("interaction", "--oidc-issuer="+is.URL, "--oidc-client-id="+is.ClientID,
			"--oidc-redirect-url="+ia.URL()+"/agent/v1/oidc/callback")
	}})
	bctx := newBrowser(t)
	tab := newTab(t, bctx, 2*time.Minute)
	fail := func(format string, args ...any) {
		t.Helper()
		screenshot(t, tab, "desktop-login-failed.png")
		t.Fatalf(format, args...)
	}

	// A wrong password: an error, no desk.
	if err := chromedp.Do(tab,
		chromedp.Navigate(c.InteractionURL()+"/agent"),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.WaitVisible(chromedp.ID("oidc-login")), // an identity provider is configured
		chromedp.SendKeys(chromedp.ID("agentId"), "ada"),
		chromedp.SendKeys(chromedp.ID("password"), "not-her-password"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("login-error")),
	); err != nil {
		fail("wrong password: %v", err)
	}
	msg, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("login-error")))
	if err != nil || !strings.Contains(msg, "invalid agent id or password") {
		fail("login error %q (%v)", msg, err)
	}
	if hidden, _ := chromedp.Run(tab, chromedp.Evaluate[bool](`document.getElementById("desk").hidden`)); !hidden {
		fail("the desk opened after a wrong password")
	}

	// The right password: the desk, as an agent (no live-chats table).
	if _, err := chromedp.Run(tab, chromedp.Evaluate[bool](`(document.getElementById("password").value = "", true)`)); err != nil {
		fail("clear the password: %v", err)
	}
	if err := chromedp.Do(tab,
		chromedp.SendKeys(chromedp.ID("password"), c.Agents().Password("ada")),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("desk")),
		chromedp.WaitVisible(chromedp.ID("ready")),
	); err != nil {
		fail("right password: %v", err)
	}
	me, _ := chromedp.Run(tab, chromedp.Text(chromedp.ID("me")))
	if !strings.Contains(me, "ada") || !strings.Contains(me, "agent") {
		fail("desk header %q", me)
	}
	if hidden, _ := chromedp.Run(tab, chromedp.Evaluate[bool](`document.getElementById("live-view").hidden`)); !hidden {
		fail("an agent sees the supervisors' live-chats table")
	}
	screenshot(t, tab, "desktop-login-password.png")

	// The identity provider: a fresh tab, the sign-in link, back at the desk
	// as the token's supervisor.
	tab2 := newTab(t, bctx, 2*time.Minute)
	if err := chromedp.Do(tab2,
		chromedp.Navigate(c.InteractionURL()+"/agent"),
		chromedp.WaitVisible(chromedp.ID("oidc-login")),
		chromedp.Click(chromedp.ID("oidc-login")),
		chromedp.WaitVisible(chromedp.ID("live-view")),
	); err != nil {
		screenshot(t, tab2, "desktop-login-oidc-failed.png")
		t.Fatalf("identity provider sign-in: %v", err)
	}
	me, _ = chromedp.Run(tab2, chromedp.Text(chromedp.ID("me")))
	loc, _ := chromedp.Run(tab2, chromedp.Evaluate[string](`location.href`))
	if !strings.Contains(me, "olga") || !strings.Contains(me, "supervisor") || strings.Contains(loc, "session=") {
		t.Fatalf("after sign-in: header %q, location %q (the token must leave the URL)", me, loc)
	}
	screenshot(t, tab2, "desktop-login-oidc.png")
}
