package browser

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

// TestEdgeInBrowser chats on the web sample and the agent desktop opened at
// the entrypoints (the edge, as the demo prints them), kills with kill -9
// the webapi instance that carries the customer's page, and the chat goes
// on: the page's push channel reconnects through the edge to the other
// instance, resumes with Last-Event-ID, and shows every message once.
func TestEdgeInBrowser(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh})
	harness.Eventually(t, "the edge sees both webapi instances", 20*time.Second, func() error {
		up, err := c.UpstreamsUp("edge", "webapi")
		if err == nil && len(up) != 2 {
			return errTooFew
		}
		return err
	})
	p := openChat(t, c, "browser-edge")
	p.customerSays("before the kill")
	p.agentSays("noted, before the kill")

	// The instance holding the page's push channel: the one the edge
	// counts connections to.
	d, err := c.ProxyDump("edge")
	if err != nil {
		t.Fatal(err)
	}
	victim := ""
	most := 0
	for _, cl := range d.Clusters {
		for _, ep := range cl.Endpoints {
			if cl.Name == "webapi" && ep.ActiveConnections > most {
				most = ep.ActiveConnections
				for _, name := range []string{"webapi", "webapi-2"} {
					if c.Part(name).HTTP == ep.Address {
						victim = name
					}
				}
			}
		}
	}
	if victim == "" {
		t.Fatalf("no webapi instance carries the page: %+v", d.Clusters)
	}
	c.Kill(victim, syscall.SIGKILL)
	p.customerSays("after the kill")
	p.agentSays("still here after the kill")
	p.shownOnce("before the kill", "noted, before the kill", "after the kill", "still here after the kill")
	p.shot("")
	savedInOrder(t, c, p.chatID, "before the kill", "noted, before the kill", "after the kill", "still here after the kill")
}

var errTooFew = errors.New("fewer than 2 webapi instances up")
