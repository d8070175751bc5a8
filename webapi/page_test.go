package webapi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// TestSampleInBrowser drives the Chat HA web sample in headless Chromium
// against the fake core: start a chat, see the agent join, speak and type,
// send a message whose first attempt fails with statusCode 1 (the page
// resends it with the same clientMessageId: it shows once and the core holds
// it once), live through a core connection break (banner, reconnect notices),
// and end the chat. Screenshots go to $HACHAT_ARTIFACTS (or a temp dir).
func TestSampleInBrowser(t *testing.T) {
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
	// The page's own resend is under test: the chat client does not retry.
	e := newEnvPolicy(t, telemetry.Discard(), nil, func(p *chatclient.Policy) { p.MaxAttempts = 1 })
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(700, 900))
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
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	eval := func(js string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](js))
		if err != nil {
			t.Fatalf("eval %s: %v", js, err)
		}
		return n
	}
	dir := os.Getenv("HACHAT_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", p)
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	run("start a chat",
		chromedp.Navigate(e.http.URL+"/"),
		chromedp.WaitVisible(css("#nickname")),
		chromedp.SendKeys(css("#nickname"), "Ada"),
		chromedp.SendKeys(css("#subject"), "Order 42"),
		chromedp.Click(css("#start")),
		chromedp.WaitVisible(css(`#transcript .msg[data-index="2"]`)),
	)
	chatID := "chat-1"
	if e.core.eventCount(chatID) == 0 {
		t.Fatalf("the page did not start %s", chatID)
	}
	agent := e.core.addAgent(t, chatID, "Kim")                                                                              // 3
	e.core.agentEvent(t, chatID, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "Hello Ada", chatpb.Visibility_VISIBILITY_ALL) // 4
	e.core.agentEvent(t, chatID, agent, chatpb.EventKind_EVENT_KIND_TYPING_STARTED, "", chatpb.Visibility_VISIBILITY_ALL)   // 5
	run("agent joins, speaks and types",
		chromedp.WaitVisible(css(`#transcript .msg.msg-agent[data-index="4"]`)),
		chromedp.WaitVisible(css("#typing")),
	)
	if s := text("#status"); !strings.Contains(s, "Kim") {
		t.Errorf("status = %q, want connected to Kim", s)
	}
	if s := text("#typing"); !strings.Contains(s, "Kim is typing") {
		t.Errorf("typing indicator = %q", s)
	}

	// The first attempt of the next send fails as during a failover.
	e.core.mu.Lock()
	e.core.failMsgs = 1
	e.core.mu.Unlock()
	run("send through a failover",
		chromedp.SendKeys(css("#message"), "Where is my order?"),
		chromedp.Click(css("#send")),
		chromedp.WaitVisible(css(`#transcript .msg.msg-client[data-index]:not(.pending)`)),
	)
	var msgs []*chatpb.Event
	for _, ev := range e.core.events(chatID) {
		if ev.Kind == chatpb.EventKind_EVENT_KIND_MESSAGE && ev.From.GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			msgs = append(msgs, ev)
		}
	}
	if len(msgs) != 1 || msgs[0].Text != "Where is my order?" || !strings.HasPrefix(msgs[0].ClientMessageId, "web-") {
		t.Fatalf("core holds customer messages %v, want one with the page's id", msgs)
	}
	e.core.mu.Lock()
	left := e.core.failMsgs
	e.core.mu.Unlock()
	if left != 0 {
		t.Errorf("the injected failure was not hit")
	}
	if n := eval(`Array.from(document.querySelectorAll("#transcript .msg")).filter(e => e.textContent.includes("Where is my order?")).length`); n != 1 {
		t.Errorf("the message shows %d times", n)
	}
	shot("webapi-sample-chat.png")

	// The core connection breaks: banner and notices, then back.
	e.core.setFailNext(3)
	e.core.breakStreams()
	e.core.agentEvent(t, chatID, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "Still here", chatpb.Visibility_VISIBILITY_ALL)
	run("reconnect",
		chromedp.WaitVisible(css(`#transcript .msg.local.notice-warn`)),
		chromedp.WaitVisible(css(`#transcript .msg.local.notice-ok`)),
		chromedp.WaitVisible(`//div[contains(@class,"msg-agent") and @data-index and contains(., "Still here")]`),
		chromedp.WaitNotVisible(css("#banner")),
	)
	if n := eval(`document.querySelectorAll("#transcript .msg[data-index]").length`); n != 5 {
		t.Errorf("%d indexed entries, want 5 (2 joins, 3 messages)", n)
	}
	shot("webapi-sample-reconnected.png")

	run("end the chat",
		chromedp.Click(css("#end")),
		chromedp.WaitVisible(css("#start")),
	)
	if s := text("#status"); s != "Chat ended" {
		t.Errorf("status = %q", s)
	}
	if eval(`document.getElementById("send").disabled ? 1 : 0`) != 1 {
		t.Errorf("send still enabled after the end")
	}
}
