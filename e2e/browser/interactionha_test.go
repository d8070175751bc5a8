package browser

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// The desktop's line while its push channel is away (interaction/static/app.js).
const deskLostLine = "Connection to the Interaction Server lost, reconnecting…"

// TestDesktopSurvivesInteractionKill9: an agent's desktop open through the
// edge (the agents' entrypoint, in front of two interaction instances);
// kill -9 of the leading instance. The desktop stays at the desk (its token
// works on the instance that takes over), its push channel comes back
// through the edge, and the agent saw exactly one "reconnecting" line and
// then "Connected".
func TestDesktopSurvivesInteractionKill9(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, CoordMembers: 3})
	leader, follower := "interaction", "interaction-2"
	harness.Eventually(t, "one interaction instance leads", 20*time.Second, func() error {
		if c.Metric("interaction-2", "hachat_interaction_leader") == 1 {
			leader, follower = follower, leader
		}
		if c.Metric(leader, "hachat_interaction_leader") != 1 {
			return errNoLeader
		}
		return nil
	})
	bctx := newBrowser(t)
	tab := newTab(t, bctx, 2*time.Minute)
	fail := func(format string, args ...any) {
		t.Helper()
		screenshot(t, tab, "desktop-interaction-kill9-failed.png")
		t.Fatalf(format, args...)
	}
	if err := chromedp.Do(tab,
		chromedp.Navigate(c.Entrypoints().Agent+"/agent"),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.SendKeys(chromedp.ID("agentId"), "ada"),
		chromedp.SendKeys(chromedp.ID("password"), c.Agents().Password("ada")),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("desk")),
	); err != nil {
		fail("login: %v", err)
	}
	if err := waitJS(tab, "the push channel connected", `document.getElementById("status").textContent === "Connected"`); err != nil {
		fail("%v", err)
	}
	// Record every status line the agent is shown from now on.
	if _, err := chromedp.Run(tab, chromedp.Evaluate[bool](`(() => {
		const el = document.getElementById("status");
		window.__lines = [];
		new MutationObserver(() => {
			const t = el.textContent;
			if (window.__lines[window.__lines.length - 1] !== t) window.__lines.push(t);
		}).observe(el, {childList: true, characterData: true, subtree: true});
		return true;
	})()`)); err != nil {
		fail("status recorder: %v", err)
	}
	c.Kill(leader, syscall.SIGKILL)
	if err := waitJS(tab, "the reconnecting line", `window.__lines.includes(`+jsString(deskLostLine)+`)`); err != nil {
		fail("%v", err)
	}
	if err := waitJS(tab, "Connected again", `window.__lines.slice(window.__lines.indexOf(`+jsString(deskLostLine)+`) + 1).includes("Connected")`); err != nil {
		lines, _ := chromedp.Run(tab, chromedp.Evaluate[[]string](`window.__lines`))
		fail("%v (lines %q)", err, lines)
	}
	if c.Metric(follower, "hachat_interaction_leader") != 1 {
		t.Errorf("%s does not lead after the kill of %s", follower, leader)
	}
	lines, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`window.__lines`))
	if err != nil {
		fail("lines: %v", err)
	}
	t.Logf("the agent saw %q", lines)
	n := 0
	for _, l := range lines {
		if l == deskLostLine {
			n++
		}
		if strings.Contains(strings.ToLower(l), "log in") || strings.Contains(strings.ToLower(l), "expired") {
			t.Errorf("the desktop asked to log in again: %q", l)
		}
	}
	if n != 1 {
		t.Errorf("the agent saw the reconnecting line %d times, want once: %q", n, lines)
	}
	if hidden, _ := chromedp.Run(tab, chromedp.Evaluate[bool](`document.getElementById("desk").hidden`)); hidden {
		fail("the desk closed after the takeover")
	}
	screenshot(t, tab, "desktop-interaction-kill9.png")
}

var errNoLeader = errors.New("no interaction instance leads yet")
