package browser

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/e2e/harness"
)

// TestAgentDesktopStyledLikeCustomerPage chats through the web sample and
// the agent desktop, then checks that the desktop loaded its stylesheet and
// speaks the customer page's design language: the computed styles of its
// key elements (page, header band, status pill, card, buttons, composer,
// message bubbles, notices) equal those of their counterparts on the
// customer page. The desktop's screenshot lands in artifacts/.
func TestAgentDesktopStyledLikeCustomerPage(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	p := openChat(t, c, "styled")
	p.customerSays("Is the desktop dressed like this page?")
	p.agentSays("It is, down to the bubbles.")
	p.shot("")

	loaded, err := chromedp.Run(p.agent, chromedp.Evaluate[bool](
		`[...document.styleSheets].some(s => s.href && s.href.endsWith("/agent/style.css") && s.cssRules.length > 20)`))
	if err != nil || !loaded {
		t.Errorf("the desktop's stylesheet /agent/style.css is not loaded (%v)", err)
	}

	for _, pair := range []struct {
		what, customer, agent string
		props                 []string
	}{
		{"page", "body", "body", []string{"font-family", "font-size", "line-height", "color", "background-color"}},
		{"header band", ".top", "header", []string{"background-color", "color", "padding-top", "padding-left"}},
		{"title", ".top h1", "header h1", []string{"font-family", "font-size", "font-weight"}},
		{"status pill", "#status", "#status", []string{"font-size", "border-top-left-radius", "padding-top", "padding-left", "background-color"}},
		{"card", ".card", "#desk", []string{"background-color", "border-top-left-radius", "box-shadow"}},
		{"main button", "#send", "#chats .chat .reply-send", []string{"font-family", "font-size", "background-color", "color",
			"border-top-left-radius", "border-top-width", "padding-top", "padding-left"}},
		{"other button", "#end", "#chats .chat .close-chat", []string{"background-color", "color", "border-top-width"}},
		{"composer", "#message", "#chats .chat .reply-input", []string{"font-family", "font-size", "border-top-color",
			"border-top-width", "border-top-left-radius", "padding-top", "padding-left"}},
		{"own message", "#transcript .msg-client[data-index]", "#chats .msg.mine[data-kind=Message]",
			[]string{"background-color", "color", "border-top-left-radius", "border-bottom-right-radius", "padding-top", "padding-left"}},
		{"other's message", "#transcript .msg-agent[data-index]", "#chats .msg[data-kind=Message]:not(.mine)",
			[]string{"background-color", "color", "border-top-left-radius", "border-bottom-left-radius"}},
		{"notice", "#transcript .msg-system[data-type=ParticipantJoined]", "#chats .msg.system[data-kind=ParticipantJoined]",
			[]string{"color", "font-size", "background-color"}},
	} {
		want := computed(p, p.customer, pair.customer, pair.props)
		got := computed(p, p.agent, pair.agent, pair.props)
		for _, prop := range pair.props {
			if got[prop] != want[prop] {
				t.Errorf("%s: the desktop's %s has %s %q, the customer page's %s %q",
					pair.what, pair.agent, prop, got[prop], pair.customer, want[prop])
			}
		}
	}
}

// computed returns the computed values of props of the first element sel
// selects in the tab.
func computed(p *pages, tab context.Context, sel string, props []string) map[string]string {
	p.t.Helper()
	ps, _ := json.Marshal(props)
	js := `(() => { const e = document.querySelector(` + jsString(sel) + `); if (!e) return null;
		const s = getComputedStyle(e); return Object.fromEntries(` + string(ps) + `.map(p => [p, s.getPropertyValue(p)])); })()`
	m, err := chromedp.Run(tab, chromedp.Evaluate[map[string]string](js))
	if err != nil || m == nil {
		p.fail("computed style of %s: %v (no such element?)", sel, err)
	}
	return m
}
