package browser

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// sitePage is a company's page on its own origin that embeds the chat with
// one script tag (%s: webapi's URL). Its own styles must not reach the chat.
const sitePage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme shop</title>
<style>body { font-family: Georgia, serif; background: #fdf6e3; color: #553; margin: 40px; }
button, input { color: red; font-size: 30px; } h1 { color: #b58900; }</style></head>
<body><h1>Acme shop</h1><p>Our finest anvils, delivered.</p>
<script src="%s/static/widget.js" data-service="customer-support" async></script>
</body></html>`

// TestWidgetOnAnotherSite serves a company's page on one origin and
// webapi on another (webapi lists the page's origin in --allowed-origins):
// the one script tag mounts the chat in the page; the customer starts a
// chat in it, the agent accepts it on the desktop, both chat, the customer
// gets the agent's messages; then kill -9 of the primary and a switchover
// show one "reconnecting" and one "reconnected" line each in the widget.
func TestWidgetOnAnotherSite(t *testing.T) {
	var webapiURL atomic.Value
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, sitePage, webapiURL.Load())
	}))
	t.Cleanup(site.Close)
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, Tune: func(p demo.Plan) demo.Plan {
		return p.With("webapi", "--allowed-origins="+site.URL)
	}})
	webapiURL.Store(c.WebAPIURL())
	siteURL, _ := url.Parse(site.URL)
	apiURL, _ := url.Parse(c.WebAPIURL())
	if siteURL.Host == apiURL.Host {
		t.Fatalf("the site and webapi share an origin (%s): the test would prove nothing", site.URL)
	}
	c.WaitRole("core-b", "backup", 15*time.Second)

	p := openChatOn(t, c, "widget", site.URL+"/", widgetRoot, func(p *pages) error {
		if err := waitJS(p.customer, "the widget to mount",
			`document.querySelector("#hachat-widget") && document.querySelector("#hachat-widget").dataset.ready === "true"`); err != nil {
			return err
		}
		return chromedp.Do(p.customer, chromedp.Click(chromedp.JSPath(widgetRoot+`.querySelector("#launcher")`)))
	})
	// The chat card is styled by webapi's stylesheet, not by the site's.
	font, err := chromedp.Run(p.customer, chromedp.Evaluate[string](
		`getComputedStyle(`+widgetRoot+`.querySelector("#start")).color + " " + getComputedStyle(`+widgetRoot+`.querySelector(".card")).fontFamily`))
	if err != nil || font == "" || strings.HasPrefix(font, "rgb(255, 0, 0)") || strings.Contains(font, "Georgia") {
		t.Errorf("the widget's button and font: %q (%v): the site's styles leak in", font, err)
	}
	p.customerSays("Hello from the shop page")
	p.agentSays("Hello, how can I help?")
	p.shownOnce("Hello from the shop page", "Hello, how can I help?")
	p.shot("")
	failoverAndSwitchover(p, c)
}
