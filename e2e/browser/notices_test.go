package browser

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hachat/hachat/e2e/harness"
)

// The two lines the customer sees when the chat server goes away and comes
// back (webapi/static/app.js), whatever the cause.
const (
	lostLine = "Disconnected from the chat server — reconnecting…"
	backLine = "Reconnected to the chat server"
)

// customerLines returns the system lines the customer sees, in order
// (hidden ones left out).
func (p *pages) customerLines() []string {
	p.t.Helper()
	lines, err := chromedp.Run(p.customer, chromedp.Evaluate[[]string](p.in(
		`[...document.querySelectorAll("#transcript .msg-system")].filter(e => !e.hidden && e.offsetParent !== null).map(e => e.textContent)`)))
	if err != nil {
		p.fail("the customer's lines: %v", err)
	}
	return lines
}

// countCustomer counts the elements of the customer's transcript that css
// selects, shown or not.
func (p *pages) countCustomer(css string) int {
	p.t.Helper()
	n, err := chromedp.Run(p.customer, chromedp.Evaluate[int](p.in(`document.querySelectorAll("#transcript `+css+`").length`)))
	if err != nil {
		p.fail("count %s: %v", css, err)
	}
	return n
}

// expectLines waits until the customer's transcript holds the failover
// notices of n failovers or switchovers (kept, hidden: one disconnected and
// one reconnected notice per participant) and shows n reconnected lines,
// then checks that the customer sees exactly want.
func (p *pages) expectLines(what string, n int, want []string) {
	p.t.Helper()
	// Customer and agent: two notices of each kind per fault.
	if err := waitJS(p.customer, "the transcript's failover notices and the reconnected line",
		p.in(fmt.Sprintf(`document.querySelectorAll("#transcript [data-type=ParticipantReconnected]").length >= %d && `+
			`[...document.querySelectorAll("#transcript .msg-system")].filter(e => !e.hidden && e.textContent === %s).length >= %d`,
			2*n, jsString(backLine), n))); err != nil {
		p.fail("%s: %v (lines %q)", what, err, p.customerLines())
	}
	if got := p.countCustomer("[data-type=ParticipantDisconnected]"); got != 2*n {
		p.t.Errorf("%s: the page holds %d disconnected notices, want %d (kept, not shown)", what, got, 2*n)
	}
	got := p.customerLines()
	p.t.Logf("%s: the customer sees %q", what, got)
	if !slices.Equal(got, want) {
		p.shot("-" + strings.ReplaceAll(what, " ", "-") + "-failed")
		p.t.Fatalf("%s: the customer sees\n  %q\nwant\n  %q", what, got, want)
	}
}

// failoverAndSwitchover kills the primary (core-a) with kill -9, chats on,
// and checks the customer sees one "reconnecting" and one "reconnected"
// line; then it restarts core-a (it comes back as backup), switches back
// to it with `hachat ctl switchover`, chats on, and checks the customer
// sees one more pair of lines and no "failover" wording. The transcript at
// UCS keeps the Genesys notices (transcript-save-notices: disconnect).
func failoverAndSwitchover(p *pages, c *harness.Cluster) {
	t := p.t
	t.Helper()
	p.customerSays("before the failover")
	p.agentSays("noted, before the failover")
	start := p.customerLines()

	c.Kill("core-a", syscall.SIGKILL)
	c.WaitRole("core-b", "primary", 10*time.Second)
	p.customerSays("after the failover")
	p.agentSays("still here after the failover")
	afterFailover := append(slices.Clone(start), lostLine, backLine)
	p.expectLines("after kill -9", 1, afterFailover)
	p.shot("-after-failover")

	c.Restart("core-a")
	c.WaitRole("core-a", "backup", 20*time.Second)
	c.WaitBackupInSync("core-b", 20*time.Second)
	if out, err := c.Ctl("switchover", "--admin-token", c.AdminToken()); err != nil {
		p.fail("hachat ctl switchover: %v\n%s", err, out)
	}
	c.WaitRole("core-a", "primary", 10*time.Second)
	p.customerSays("after the switchover")
	p.agentSays("still here after the switchover")
	p.expectLines("after the switchover", 2, append(slices.Clone(afterFailover), lostLine, backLine))
	for _, line := range p.customerLines() {
		if strings.Contains(strings.ToLower(line), "failover") {
			t.Errorf("the customer sees failover wording: %q", line)
		}
	}
	p.shownOnce("before the failover", "noted, before the failover", "after the failover",
		"still here after the failover", "after the switchover", "still here after the switchover")
	p.shot("-after-switchover")

	// Only the display folds the notices: the stored transcript keeps them
	// as the cores' transcript-save-notices (default: disconnect) says.
	harness.Eventually(t, "the failover notices in the UCS transcript", 15*time.Second, func() error {
		tr, err := c.UCS().Transcript(t.Context(), p.chatID)
		if err != nil {
			return err
		}
		n := map[string]int{}
		for _, ev := range harness.TranscriptView(tr) {
			n[ev.Type]++
		}
		if n["ParticipantDisconnected"] < 4 || n["ParticipantReconnected"] < 4 {
			return errors.New(fmt.Sprint("saved notices: ", n))
		}
		return nil
	})
}
