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

	"github.com/hachat/hachat/demo"
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

// pages is a customer on the web sample (or on a site that embeds the
// widget) and an agent on the desktop, in two tabs of one headless
// Chromium, chatting in one chat.
type pages struct {
	t        *testing.T
	customer context.Context
	agent    context.Context
	chatID   string
	prefix   string // screenshot file name prefix
	// root is the JavaScript expression of what holds the customer's chat
	// card: "document" on the web sample, the widget's shadow root on a
	// site that embeds it.
	root string
}

// pageRoot and widgetRoot are the values of pages.root.
const (
	pageRoot   = "document"
	widgetRoot = `document.querySelector("#hachat-widget").shadowRoot`
)

// sel selects the element of the customer's chat card with this id.
func (p *pages) sel(id string) chromedp.JSPath {
	return chromedp.JSPath(p.root + `.querySelector("#` + id + `")`)
}

// in rewrites a customer-side expression written against document to run
// against the chat card's root.
func (p *pages) in(expr string) string {
	return strings.ReplaceAll(expr, "document.", p.root+".")
}

// shot saves both pages as artifacts/<prefix>-web-sample<suffix>.png and
// artifacts/<prefix>-agent-desktop<suffix>.png.
func (p *pages) shot(suffix string) {
	screenshot(p.t, p.customer, p.prefix+"-web-sample"+suffix+".png")
	screenshot(p.t, p.agent, p.prefix+"-agent-desktop"+suffix+".png")
}

// fail saves the screenshots and fails the test.
func (p *pages) fail(format string, args ...any) {
	p.t.Helper()
	p.shot("-failed")
	p.t.Fatalf(format, args...)
}

// openChat logs an agent in on the desktop, starts a chat on the web sample,
// accepts the offer on the desktop, and waits until the web sample shows the
// agent's join.
func openChat(t *testing.T, c *harness.Cluster, prefix string) *pages {
	t.Helper()
	return openChatOn(t, c, prefix, c.Entrypoints().Customer+"/", pageRoot, nil)
}

// openChatOn is openChat with the customer on the page at customerURL (the
// agent on the desktop at the agents' entrypoint: the edge's on the mesh),
// whose chat card is under root; open, when set, runs on the customer's tab
// before the start form is filled (to open the widget).
func openChatOn(t *testing.T, c *harness.Cluster, prefix, customerURL, root string, open func(p *pages) error) *pages {
	t.Helper()
	bctx := newBrowser(t)
	p := &pages{t: t, agent: newTab(t, bctx, 3*time.Minute), customer: newTab(t, bctx, 3*time.Minute), prefix: prefix, root: root}

	// The agent logs in and goes ready.
	if err := chromedp.Do(p.agent,
		chromedp.Navigate(c.Entrypoints().Agent+"/agent"),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.SendKeys(chromedp.ID("agentId"), "ada"),
		chromedp.SendKeys(chromedp.ID("password"), c.Agents().Password("ada")),
		chromedp.SendKeys(chromedp.ID("nickname"), "Ada"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("desk")),
		chromedp.Click(chromedp.ID("ready")),
	); err != nil {
		p.fail("agent desktop login: %v", err)
	}
	if err := waitJS(p.agent, "the agent to be ready", `document.getElementById("ready").dataset.ready === "true"`); err != nil {
		p.fail("%v", err)
	}
	// The core is up: the desktop must not claim otherwise.
	if status, err := chromedp.Run(p.agent, chromedp.Text(chromedp.ID("status"))); err != nil || strings.Contains(status, "not connected") {
		t.Errorf("agent desktop status %q (%v) on a healthy cluster", status, err)
	}

	// The customer starts a chat on the web sample.
	if err := chromedp.Do(p.customer, chromedp.Navigate(customerURL)); err != nil {
		p.fail("open %s: %v", customerURL, err)
	}
	if open != nil {
		if err := open(p); err != nil {
			p.fail("%v", err)
		}
	}
	if err := chromedp.Do(p.customer,
		chromedp.WaitVisible(p.sel("start-form")),
		chromedp.SendKeys(p.sel("nickname"), "Grace"),
		chromedp.SendKeys(p.sel("subject"), "My order has not arrived"),
		chromedp.Click(p.sel("start")),
		chromedp.WaitVisible(p.sel("chat")),
	); err != nil {
		p.fail("web sample start: %v", err)
	}

	// The offer reaches the desktop; the agent accepts it.
	if err := chromedp.Do(p.agent,
		chromedp.WaitVisible(chromedp.CSS("#offers li button.accept")),
		chromedp.Click(chromedp.CSS("#offers li button.accept")),
		chromedp.WaitVisible(chromedp.CSS("#chats .chat .reply-input")),
	); err != nil {
		p.fail("accept the offer: %v", err)
	}
	chatID, err := chromedp.Run(p.agent, chromedp.Evaluate[string](`document.querySelector("#chats [data-chat]").dataset.chat`))
	if err != nil || chatID == "" {
		p.fail("chat id on the desktop: %q %v", chatID, err)
	}
	p.chatID = chatID
	t.Logf("chat %s", chatID)
	// The customer page learns that an agent joined.
	if err := waitJS(p.customer, "the agent's join on the web sample",
		p.in(`[...document.querySelectorAll("#transcript [data-type=ParticipantJoined]")].some(e => e.textContent.includes("Ada"))`)); err != nil {
		p.fail("%v", err)
	}
	return p
}

// customerSays types text on the web sample, sends it, and waits until the
// desktop shows it.
func (p *pages) customerSays(text string) {
	p.t.Helper()
	if err := chromedp.Do(p.customer,
		chromedp.SendKeys(p.sel("message"), text),
		chromedp.Click(p.sel("send")),
	); err != nil {
		p.fail("customer send: %v", err)
	}
	if err := waitJS(p.agent, "the customer's message on the desktop",
		`[...document.querySelectorAll("#chats .msg[data-kind=Message] .text")].some(e => e.textContent === `+jsString(text)+`)`); err != nil {
		p.fail("%v", err)
	}
}

// agentSays types text on the desktop, sends it, and waits until the web
// sample shows it.
func (p *pages) agentSays(text string) {
	p.t.Helper()
	if err := chromedp.Do(p.agent,
		chromedp.SendKeys(chromedp.CSS("#chats .chat .reply-input"), text),
		chromedp.Click(chromedp.CSS("#chats .chat .reply-send")),
	); err != nil {
		p.fail("agent send: %v", err)
	}
	if err := waitJS(p.customer, "the agent's message on the web sample",
		p.in(`[...document.querySelectorAll("#transcript [data-type=Message]")].some(e => e.lastChild && e.lastChild.textContent === `+jsString(text)+`)`)); err != nil {
		p.fail("%v", err)
	}
}

// shownOnce checks that each text is shown exactly once on each page.
func (p *pages) shownOnce(texts ...string) {
	p.t.Helper()
	for _, check := range []struct {
		tab  context.Context
		page string
		expr string
	}{
		{p.customer, "web sample", p.in(`[...document.querySelectorAll("#transcript [data-type=Message]")].filter(e => e.lastChild && e.lastChild.textContent === %s).length`)},
		{p.agent, "agent desktop", `[...document.querySelectorAll("#chats .msg[data-kind=Message] .text")].filter(e => e.textContent === %s).length`},
	} {
		for _, text := range texts {
			n, err := chromedp.Run(check.tab, chromedp.Evaluate[int](fmt.Sprintf(check.expr, jsString(text))))
			if err != nil || n != 1 {
				p.t.Errorf("%s shows %q %d times (%v), want once", check.page, text, n, err)
			}
		}
	}
}

// savedInOrder waits until UCS holds exactly these messages, in order.
func savedInOrder(t *testing.T, c *harness.Cluster, chatID string, texts ...string) {
	t.Helper()
	harness.Eventually(t, "the messages in the UCS transcript", 15*time.Second, func() error {
		tr, err := c.UCS().Transcript(t.Context(), chatID)
		if err != nil {
			return err
		}
		var saved []string
		for _, ev := range harness.TranscriptView(tr) {
			if ev.Type == "Message" {
				saved = append(saved, ev.Text)
			}
		}
		if strings.Join(saved, "|") != strings.Join(texts, "|") {
			return errors.New("saved: " + strings.Join(saved, "|"))
		}
		return nil
	})
}

// TestWebSampleAndAgentDesktop starts a chat in the web sample, accepts it
// on the agent desktop, exchanges messages both ways through the two pages,
// checks the saved transcript, and keeps a screenshot of each page.
func TestWebSampleAndAgentDesktop(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	p := openChat(t, c, "browser")
	const fromCustomer = "Hello, my parcel is late"
	const fromAgent = "Sorry to hear that, let me check"
	p.customerSays(fromCustomer)
	p.agentSays(fromAgent)
	p.shownOnce(fromCustomer, fromAgent)
	p.shot("")
	savedInOrder(t, c, p.chatID, fromCustomer, fromAgent)
}

// TestFailoverInBrowser chats on the web sample and on the agent desktop
// on the cluster `hachat demo` runs (the mesh: the pages' servers reach the
// cores only through their sidecars), kills the primary with kill -9, sends
// again from both pages, and the chat simply goes on: the customer sees
// exactly one "reconnecting" and one "reconnected" line, the desktop its
// notices. Then the killed core comes back as backup and a planned
// switchover moves the chat back to it: one more pair of lines, no
// "failover" wording.
func TestFailoverInBrowser(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh})
	c.WaitRole("core-b", "backup", 15*time.Second)
	p := openChat(t, c, "browser-failover")
	failoverAndSwitchover(p, c)
	if err := waitJS(p.agent, "reconnect notices on the desktop",
		`document.querySelector("#chats .msg[data-kind=ParticipantDisconnected]") && document.querySelector("#chats .msg[data-kind=ParticipantReconnected]")`); err != nil {
		p.fail("%v", err)
	}
	savedInOrder(t, c, p.chatID, "before the failover", "noted, before the failover", "after the failover",
		"still here after the failover", "after the switchover", "still here after the switchover")
}
