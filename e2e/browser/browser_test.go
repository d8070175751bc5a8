// Package browser drives the Chat HA web sample (webapi, /) and the agent
// desktop (interaction, /agent) in headless Chromium (Debian's package)
// through chromedp, against a real cluster, and keeps a screenshot of each
// page in artifacts/.
package browser

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/e2e/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// chromium finds the browser. Outside CI a missing browser skips the test;
// in CI (CI set) `make test` installs it, so a missing one fails.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found, and CI is set: `make test` (make deps) installs it with apt-get")
	}
	t.Skip("chromium not installed (apt-get install chromium, or run `make test`, which installs it)")
	return ""
}

// newBrowser starts headless Chromium and returns a context for its first tab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // we run as root in CI containers
		chromedp.DisableGPU,
		chromedp.WindowSize(1100, 850),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	// Start the browser now, so that tabs made later share it.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// newTab opens another tab in the browser of parent, bounded by timeout.
func newTab(t *testing.T, parent context.Context, timeout time.Duration) context.Context {
	t.Helper()
	tab, cancel := chromedp.NewContext(parent)
	tab, cancelTimeout := context.WithTimeout(tab, timeout)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
	})
	return tab
}

// waitJS polls a JavaScript expression until it is truthy.
func waitJS(ctx context.Context, what, expr string) error {
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		return fmt.Errorf("wait for %s: %w", what, err)
	}
	return nil
}

// screenshot saves a full-page PNG of the tab under artifacts/ and logs its path.
func screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	path := filepath.Join(harness.ArtifactDir(t), name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Errorf("save screenshot: %v", err)
		return ""
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(buf))
	return path
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestWebSampleAndAgentDesktop starts a chat in the web sample, accepts it
// on the agent desktop, exchanges messages both ways through the two pages,
// checks the saved transcript, and keeps a screenshot of each page.
func TestWebSampleAndAgentDesktop(t *testing.T) {
	bctx := newBrowser(t)
	c := harness.StartCluster(t, harness.Options{})
	agentTab := newTab(t, bctx, 90*time.Second)
	customerTab := newTab(t, bctx, 90*time.Second)
	shot := func() {
		screenshot(t, customerTab, "browser-web-sample.png")
		screenshot(t, agentTab, "browser-agent-desktop.png")
	}
	fail := func(format string, args ...any) {
		t.Helper()
		shot()
		t.Fatalf(format, args...)
	}

	// The agent logs in and goes ready.
	if err := chromedp.Do(agentTab,
		chromedp.Navigate(c.InteractionURL()+"/agent"),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.SendKeys(chromedp.ID("agentId"), "ada"),
		chromedp.SendKeys(chromedp.ID("nickname"), "Ada"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("desk")),
		chromedp.Click(chromedp.ID("ready")),
	); err != nil {
		fail("agent desktop login: %v", err)
	}
	if err := waitJS(agentTab, "the agent to be ready", `document.getElementById("ready").dataset.ready === "true"`); err != nil {
		fail("%v", err)
	}
	// The core is up: the desktop must not claim otherwise.
	if status, err := chromedp.Run(agentTab, chromedp.Text(chromedp.ID("status"))); err != nil || strings.Contains(status, "not connected") {
		t.Errorf("agent desktop status %q (%v) on a healthy cluster", status, err)
	}

	// The customer starts a chat on the web sample.
	if err := chromedp.Do(customerTab,
		chromedp.Navigate(c.WebAPIURL()+"/"),
		chromedp.WaitVisible(chromedp.ID("start-form")),
		chromedp.SendKeys(chromedp.ID("nickname"), "Grace"),
		chromedp.SendKeys(chromedp.ID("subject"), "My order has not arrived"),
		chromedp.Click(chromedp.ID("start")),
		chromedp.WaitVisible(chromedp.ID("chat")),
	); err != nil {
		fail("web sample start: %v", err)
	}

	// The offer reaches the desktop; the agent accepts it.
	if err := chromedp.Do(agentTab,
		chromedp.WaitVisible(chromedp.CSS("#offers li button.accept")),
		chromedp.Click(chromedp.CSS("#offers li button.accept")),
		chromedp.WaitVisible(chromedp.CSS("#chats .chat .reply-input")),
	); err != nil {
		fail("accept the offer: %v", err)
	}
	chatID, err := chromedp.Run(agentTab, chromedp.Evaluate[string](`document.querySelector("#chats [data-chat]").dataset.chat`))
	if err != nil || chatID == "" {
		fail("chat id on the desktop: %q %v", chatID, err)
	}
	t.Logf("chat %s", chatID)
	// The customer page learns that an agent joined.
	if err := waitJS(customerTab, "the agent's join on the web sample",
		`[...document.querySelectorAll("#transcript [data-type=ParticipantJoined]")].some(e => e.textContent.includes("Ada"))`); err != nil {
		fail("%v", err)
	}

	// Customer → agent.
	const fromCustomer = "Hello, my parcel is late"
	if err := chromedp.Do(customerTab,
		chromedp.SendKeys(chromedp.ID("message"), fromCustomer),
		chromedp.Click(chromedp.ID("send")),
	); err != nil {
		fail("customer send: %v", err)
	}
	if err := waitJS(agentTab, "the customer's message on the desktop",
		`[...document.querySelectorAll("#chats .msg[data-kind=Message] .text")].some(e => e.textContent === `+jsString(fromCustomer)+`)`); err != nil {
		fail("%v", err)
	}

	// Agent → customer.
	const fromAgent = "Sorry to hear that, let me check"
	if err := chromedp.Do(agentTab,
		chromedp.SendKeys(chromedp.CSS("#chats .chat .reply-input"), fromAgent),
		chromedp.Click(chromedp.CSS("#chats .chat .reply-send")),
	); err != nil {
		fail("agent send: %v", err)
	}
	if err := waitJS(customerTab, "the agent's message on the web sample",
		`[...document.querySelectorAll("#transcript [data-type=Message]")].some(e => e.textContent.includes(`+jsString(fromAgent)+`))`); err != nil {
		fail("%v", err)
	}
	// Each message is shown once on each page.
	for _, check := range []struct {
		tab  context.Context
		page string
		expr string
	}{
		{customerTab, "web sample", `[...document.querySelectorAll("#transcript [data-type=Message]")].filter(e => e.textContent.includes(%s)).length`},
		{agentTab, "agent desktop", `[...document.querySelectorAll("#chats .msg[data-kind=Message] .text")].filter(e => e.textContent === %s).length`},
	} {
		for _, text := range []string{fromCustomer, fromAgent} {
			n, err := chromedp.Run(check.tab, chromedp.Evaluate[int](fmt.Sprintf(check.expr, jsString(text))))
			if err != nil || n != 1 {
				t.Errorf("%s shows %q %d times (%v), want once", check.page, text, n, err)
			}
		}
	}
	shot()

	// The transcript in UCS holds both, in order.
	harness.Eventually(t, "both messages in the UCS transcript", 15*time.Second, func() error {
		tr, err := c.UCS().Transcript(t.Context(), chatID)
		if err != nil {
			return err
		}
		var texts []string
		for _, ev := range harness.TranscriptView(tr) {
			if ev.Type == "Message" {
				texts = append(texts, ev.Text)
			}
		}
		if strings.Join(texts, "|") != fromCustomer+"|"+fromAgent {
			return errors.New("saved: " + strings.Join(texts, "|"))
		}
		return nil
	})
}
