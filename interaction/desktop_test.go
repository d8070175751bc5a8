package interaction

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestDesktopInBrowser drives the agent desktop in headless Chromium against
// the fake core: log in, go ready, accept the offer, see the customer's
// message and typing, reply, and see the customer's next message live. The
// screenshot goes to $HACHAT_ARTIFACTS (or the test's temp dir).
func TestDesktopInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	var browser string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Skip("no Chromium on this machine")
	}
	e := newEnv(t, nil)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1200, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	run("log in",
		chromedp.Navigate(e.url+"/agent"),
		chromedp.WaitVisible(css("#agentId")),
		chromedp.SendKeys(css("#agentId"), "web1"),
		chromedp.SendKeys(css("#password"), testPassword("web1")),
		chromedp.SendKeys(css("#nickname"), "Wendy"),
		chromedp.Click(css("#login")),
		chromedp.WaitVisible(css("#ready")),
		chromedp.Click(css("#ready")),
		chromedp.WaitVisible(css(`#ready[aria-pressed="true"]`)),
	)
	cust := e.customer("Pia")
	chat := cust.SessionId
	e.customerSay(cust, "hello from Pia", "c-1")
	sel := `.chat[data-chat="` + chat + `"]`
	run("accept the offer",
		chromedp.WaitVisible(css(`#offers .accept[data-chat="`+chat+`"]`)),
		chromedp.Click(css(`#offers .accept[data-chat="`+chat+`"]`)),
		chromedp.WaitVisible(css(sel+` .msg[data-index="3"]`)),
	)
	text, err := chromedp.Run(ctx, chromedp.Text(css(sel+` .msg[data-index="3"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "hello from Pia") {
		t.Errorf("transcript entry 3 = %q, want the customer's message", text)
	}
	if _, err := e.cc.Send(context.Background(), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_TYPING_STARTED}); err != nil {
		t.Fatal(err)
	}
	run("customer typing shown", chromedp.WaitVisible(css(sel+` .typing`)))
	run("reply",
		chromedp.SendKeys(css(sel+` .reply-input`), "Hi Pia, how can I help?"),
		chromedp.Click(css(sel+` .reply-send`)),
	)
	e.waitFor("reply in the core", func() bool {
		for _, ev := range e.core.customerView(chat) {
			if ev.Kind == chatpb.EventKind_EVENT_KIND_MESSAGE && ev.Text == "Hi Pia, how can I help?" {
				return ev.ClientMessageId != ""
			}
		}
		return false
	})
	idx := e.customerSay(cust, "my parcel is lost", "c-2")
	run("live customer message",
		chromedp.WaitVisible(css(sel+` .msg[data-index="`+strconv.FormatUint(idx, 10)+`"]`)),
		chromedp.WaitNotVisible(css(sel+` .typing`)),
	)
	// A reply sent while the core is away is retried with the same
	// clientMessageId and stored once.
	e.core.setDown(true)
	run("reply during an outage",
		chromedp.SendKeys(css(sel+` .reply-input`), "sorry for the wait"),
		chromedp.Click(css(sel+` .reply-send`)),
		chromedp.WaitVisible(css(sel+` .pending`)),
	)
	e.waitFor("a refused attempt", func() bool {
		e.core.mu.Lock()
		defer e.core.mu.Unlock()
		return e.core.refused >= 3 // typing started, typing stopped, and the reply
	})
	e.core.setDown(false)
	e.waitFor("the retried reply in the core", func() bool {
		for _, ev := range e.core.customerView(chat) {
			if ev.Text == "sorry for the wait" {
				return true
			}
		}
		return false
	})
	run("retried reply shown", chromedp.WaitNotPresent(css(sel+` .pending`)))
	n := 0
	for _, ev := range e.core.customerView(chat) {
		if ev.Text == "sorry for the wait" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("retried reply stored %d times, want 1", n)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("HACHAT_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent-desktop.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	// Every transcript entry is shown once, in index order.
	indexes, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('`+sel+` .msg')).map(m => m.dataset.index)`))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(indexes); i++ {
		if num(indexes[i]) <= num(indexes[i-1]) {
			t.Errorf("transcript order %v", indexes)
			break
		}
	}

	// A supervisor in a second tab monitors, then coaches; the agent's page
	// shows the coaching message as internal, the customer never sees it.
	sctx, cancelS := chromedp.NewContext(ctx)
	defer cancelS()
	runS := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		for i, st := range steps {
			if err := chromedp.Do(sctx, st); err != nil {
				shot, _ := chromedp.Run(sctx, chromedp.FullScreenshot(100))
				_ = os.WriteFile(filepath.Join(dir, "supervisor-failed.png"), shot, 0o644)
				t.Fatalf("supervisor: %s: step %d: %v", what, i, err)
			}
		}
	}
	runS("log in as supervisor",
		chromedp.Navigate(e.url+"/agent"),
		chromedp.WaitVisible(css("#agentId")),
		chromedp.SendKeys(css("#agentId"), "sup1"),
		chromedp.SendKeys(css("#password"), testPassword("sup1")),
		chromedp.SendKeys(css("#nickname"), "Sam"),
		chromedp.Click(css("#login")),
		chromedp.WaitVisible(css(`#live .monitor[data-chat="`+chat+`"]`)),
		chromedp.Click(css(`#live .monitor[data-chat="`+chat+`"]`)),
		chromedp.WaitVisible(css(sel+` .msg[data-index="`+strconv.FormatUint(idx, 10)+`"]`)),
		chromedp.WaitNotVisible(css(sel+` .reply`)), // monitoring is silent
		chromedp.Click(css(`#live .coach[data-chat="`+chat+`"]`)),
		chromedp.WaitVisible(css(sel+` .reply`)),
		chromedp.SendKeys(css(sel+` .reply-input`), "offer a voucher"),
		chromedp.Click(css(sel+` .reply-send`)),
	)
	run("agent sees the coaching", chromedp.WaitVisible(css(sel+` .msg.internal`)))
	coached, err := chromedp.Run(ctx, chromedp.Text(css(sel+` .msg.internal`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(coached, "offer a voucher") {
		t.Errorf("internal entry on the agent's page: %q", coached)
	}
	for _, ev := range e.core.customerView(chat) {
		if strings.Contains(ev.Text, "voucher") {
			t.Errorf("customer sees the coaching message: %q", ev.Text)
		}
	}
	sshot, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "supervisor-desktop.png"), sshot, 0o644); err != nil {
		t.Fatal(err)
	}
}

func num(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
