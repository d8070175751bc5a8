package browser

import (
	"net/url"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/e2e/harness"
)

// TestAgentDesktopShowsUserData: a chat started by a GMS client with
// userData[...] fields (and an email address) shows them on the agent
// desktop, under the chat's title, once the agent accepts it.
func TestAgentDesktopShowsUserData(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	bctx := newBrowser(t)
	agent := newTab(t, bctx, 2*time.Minute)
	if err := chromedp.Do(agent,
		chromedp.Navigate(c.InteractionURL()+"/agent"),
		chromedp.WaitVisible(chromedp.ID("login-form")),
		chromedp.SendKeys(chromedp.ID("agentId"), "ada"),
		chromedp.SendKeys(chromedp.ID("password"), c.Agents().Password("ada")),
		chromedp.SendKeys(chromedp.ID("nickname"), "Ada"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("desk")),
		chromedp.Click(chromedp.ID("ready")),
	); err != nil {
		t.Fatalf("agent desktop login: %v", err)
	}
	if err := waitJS(agent, "the agent to be ready", `document.getElementById("ready").dataset.ready === "true"`); err != nil {
		t.Fatal(err)
	}
	chat, resp, err := c.Customer().Start(t.Context(), url.Values{"firstName": {"Grace"}, "lastName": {"Hopper"},
		"emailAddress": {"grace@example.com"}, "userData[OrderId]": {"A-42"}, "userData[TimeZone]": {"-480"}})
	if err != nil || chat == nil {
		t.Fatalf("start: %v %+v", err, resp)
	}
	if err := chromedp.Do(agent,
		chromedp.WaitVisible(chromedp.CSS(`#offers li[data-chat="`+chat.ChatID+`"] button.accept`)),
		chromedp.Click(chromedp.CSS(`#offers li[data-chat="`+chat.ChatID+`"] button.accept`)),
		chromedp.WaitVisible(chromedp.CSS(`#chats [data-chat="`+chat.ChatID+`"] .chat-userdata`)),
	); err != nil {
		screenshot(t, agent, "userdata-agent-desktop-failed.png")
		t.Fatalf("accept the offer: %v", err)
	}
	shown, err := chromedp.Run(agent, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll(
		'#chats [data-chat="`+chat.ChatID+`"] .chat-userdata dd')].map(dd => [dd.dataset.key, dd.textContent]))`))
	if err != nil {
		t.Fatal(err)
	}
	if shown["OrderId"] != "A-42" || shown["TimeZone"] != "-480" {
		t.Errorf("the desktop shows userData %v, want OrderId=A-42 and TimeZone=-480", shown)
	}
	screenshot(t, agent, "userdata-agent-desktop.png")
}
