//go:build docker

package docker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/e2e/harness"
)

// Workload of the failover test: each side sends messages numbered 1 to
// perSide, one every interval; the primary is killed once killAfter of them
// are acknowledged, so that most of the chat happens after the kill.
const (
	perSide   = 60
	interval  = 50 * time.Millisecond
	killAfter = 20
	// minAfterKill is how many messages must be acknowledged after the
	// kill: proof that the chat went on, not only that nothing was lost.
	minAfterKill = 40
	// maxReconnectNotices bounds the agent's reconnecting notices for the
	// one failover (an earlier interaction resumed a refused stream in a
	// tight loop and sent the agent ~300 of them).
	maxReconnectNotices = 10
)

// TestPrimaryContainerKilled runs deploy/compose.yaml, starts a chat through
// webapi's customer API, has an agent accept it through interaction's agent
// API, keeps both sides sending (resending with the same clientMessageId
// while the answer is retryable), kills the primary core's container with
// SIGKILL mid-chat and checks that the chat goes on: core-b becomes primary
// at a newer epoch, and every acknowledged message appears exactly once and
// in order in the customer's refresh view, in the agent's push channel and
// in the UCS transcript, each with the failover's participant disconnected
// and reconnected notices. Then it starts core-a's container again and checks
// that core-a joins as core-b's backup and that the chat still reaches UCS.
//
// It does so twice, each time on a cluster of its own: with the control
// plane up, and with both control planes (also the cores' witnesses)
// killed before the chat starts, so that the sidecars fail over on their
// last configuration and their own health checks alone.
func TestPrimaryContainerKilled(t *testing.T) {
	requireDocker(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "deploy", "compose.yaml")); err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	img := image(t, root)
	if os.Getenv("HACHAT_DOCKER_IMAGE") == "" {
		checkFlags(t, root, harness.Binary(t))
	}
	for _, tc := range []failoverCase{
		{name: "control plane up"},
		{name: "control plane down", controlPlaneDown: true},
	} {
		t.Run(tc.name, func(t *testing.T) { failover(t, root, img, tc) })
	}
}

// TestEtcdMemberKilled (issue 8: losing any one coordination member
// changes nothing): under a running chat, one of the three etcd members'
// container is killed with SIGKILL; the chat goes on (messages
// acknowledged after the kill), and then the primary core's container is
// killed too: core-b still promotes, now claiming its epoch from the two
// members left, and every acknowledged message is there exactly once, in
// order, in every view and in UCS. The old primary is not restarted (the
// other test does that).
func TestEtcdMemberKilled(t *testing.T) {
	requireDocker(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	img := image(t, root)
	failover(t, root, img, failoverCase{name: "etcd member down", etcdDown: "etcd-1", noRestart: true})
}

// failoverCase is one run of failover.
type failoverCase struct {
	name string
	// controlPlaneDown kills both control planes before the chat starts.
	controlPlaneDown bool
	// etcdDown, when set, is the coordination member whose container is
	// killed once the chat is under way, before the primary's.
	etcdDown string
	// noRestart skips starting the old primary again at the end.
	noRestart bool
}

// failover is one run of TestPrimaryContainerKilled on a new cluster.
func failover(t *testing.T, root, img string, tc failoverCase) {
	controlPlaneDown := tc.controlPlaneDown
	testStart := time.Now()
	p := startProject(t, root, img)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	gms := &harness.GMS{Base: p.WebAPI, Service: p.Service, HTTP: &http.Client{Timeout: 10 * time.Second}}
	agents := &harness.AgentAPI{Base: p.Interaction, HTTP: &http.Client{Timeout: 10 * time.Second}, Accounts: composeAccounts}
	ucs := p.ucsClient(t)

	// 1. Ready: the pair is formed (core-a primary with core-b as its
	// backup) and the customer API reaches a core through its sidecar.
	ready := time.Now()
	var epoch uint64 // core-a's epoch as primary
	waitFor(t, ctx, "core-a primary with backup core-b", 60*time.Second, func() error {
		if dead, err := p.exited(ctx); err == nil && len(dead) > 0 {
			return fmt.Errorf("%w: containers exited: %v", errFatal, dead)
		}
		sts, err := p.cores(ctx)
		if err != nil {
			return err
		}
		epoch = epochOf(sts, "core-a")
		return pairFormed(sts, "core-a", "core-b")
	})
	var chat *harness.Chat
	waitFor(t, ctx, "webapi to start a chat", 30*time.Second, func() error {
		c, resp, err := gms.Start(ctx, url.Values{"nickname": {"Ada"}, "subject": {"docker failover"}})
		if err != nil {
			return err
		}
		if c == nil {
			return fmt.Errorf("start: %v (%s)", resp.Err(), resp.Raw)
		}
		chat = c
		return nil
	})
	t.Logf("cluster ready %v after up; chat %s", time.Since(ready).Round(time.Millisecond), chat.ChatID)

	// 2. An agent takes the chat through the Interaction Server.
	var ag *harness.Agent
	waitFor(t, ctx, "agent login", 30*time.Second, func() error {
		a, err := agents.Login(ctx, "grace", "Grace", "agent")
		if err != nil {
			return err
		}
		ag = a
		return nil
	})
	if err := ag.Connect(context.Background()); err != nil {
		t.Fatalf("agent push channel: %v", err)
	}
	t.Cleanup(ag.Close)
	tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
	err := ag.Take(tctx, chat.ChatID)
	tcancel()
	if err != nil {
		t.Fatalf("agent takes chat %s: %v", chat.ChatID, err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = ag.WaitEvent(wctx, chat.ChatID, func(ev harness.AgentEvent) bool { return ev.Kind == "ParticipantJoined" })
	wcancel()
	if err != nil {
		t.Fatalf("agent never saw chat %s: %v", chat.ChatID, err)
	}

	if controlPlaneDown {
		for _, cp := range []string{"xds", "xds-b"} {
			if _, err := p.kill(ctx, cp); err != nil {
				t.Fatalf("kill %s: %v", cp, err)
			}
		}
		t.Logf("killed xds and xds-b, the control planes and witnesses")
	}

	// 3. Both sides chat; the primary's container is killed mid-chat.
	acks := &ackClock{}
	sides := []harness.Side{acks.wrap(harness.CustomerSide(chat)), acks.wrap(ag.Side(chat.ChatID))}
	sessions := []*harness.Session{{ChatID: chat.ChatID, Sides: sides, Customer: chat, Agent: ag}}
	messages := perSide
	var sw *statusWatch
	if tc.etcdDown != "" {
		// Enough to keep chatting through the member's kill, the wait
		// after it and the primary's kill, however slow the engine is.
		messages = 6 * perSide
		// The cores' /status every 100 ms from the host: the roles and
		// epochs around the member's kill.
		sw = watchStatus(p)
		defer sw.stop()
	}
	w := harness.StartWorkload(ctx, sessions, harness.WorkloadOptions{Messages: messages, Interval: interval, RetryFor: 30 * time.Second})
	actx, acancel := context.WithTimeout(ctx, 30*time.Second)
	err = w.WaitAcked(actx, killAfter)
	acancel()
	if err != nil {
		t.Fatalf("before the kill: %v", err)
	}
	if tc.etcdDown != "" {
		// One coordination member dies under the chat; the chat goes on,
		// with no failover, before the primary is killed too.
		at := w.Acked()
		died, err := p.kill(ctx, tc.etcdDown)
		if err != nil {
			t.Fatalf("kill %s: %v", tc.etcdDown, err)
		}
		// Past etcd's election timeout (600 ms), so that a new etcd
		// leader, if the killed member led, has been elected and the
		// primary's lease kept through it.
		waitFor(t, ctx, "messages acknowledged for 2 s after the kill of "+tc.etcdDown, 30*time.Second, func() error {
			if n := w.Acked(); n < at+killAfter || time.Since(died) < 2*time.Second {
				return fmt.Errorf("%d acknowledged, %d at the kill of %s", n, at, tc.etcdDown)
			}
			return nil
		})
		if err := pairFormed(sw.latest(), "core-a", "core-b"); err != nil {
			t.Errorf("the pair after the kill of %s: %v", tc.etcdDown, err)
		}
		n := 0
		for _, s := range sw.samples() {
			if s.At.Before(died) || s.State == nil {
				continue
			}
			n++
			if s.is("core-b", "primary") || s.is("core-a", "backup") || s.Core == "core-a" && s.State.Epoch != epoch {
				t.Errorf("%s answered %s at epoch %d after the kill of %s: a failover nobody asked for",
					s.Core, s.State.Role, s.State.Epoch, tc.etcdDown)
				break
			}
		}
		if n == 0 {
			t.Errorf("no /status answer from the cores after the kill of %s", tc.etcdDown)
		}
		t.Logf("killed %s after %d acknowledged messages; %d acknowledged in the %v after it died, %d /status answers: core-a primary at epoch %d throughout",
			tc.etcdDown, at, w.Acked()-at, time.Since(died).Round(time.Millisecond), n, epoch)
	}
	killed := time.Now()
	ackedAtKill := w.Acked()
	died, err := p.kill(ctx, "core-a")
	if err != nil {
		t.Fatalf("kill core-a: %v", err)
	}
	t.Logf("killed core-a (primary at epoch %d) after %d acknowledged messages; it died %v after docker kill was called",
		epoch, ackedAtKill, died.Sub(killed).Round(time.Millisecond))
	waitFor(t, ctx, "a message acknowledged after the kill", 30*time.Second, func() error {
		if n := w.Acked(); n <= ackedAtKill+1 {
			return fmt.Errorf("%d acknowledged, %d at the kill", n, ackedAtKill)
		}
		return nil
	})

	// 4. core-b takes over at a newer epoch.
	var newEpoch uint64
	waitFor(t, ctx, "core-b primary at a newer epoch", 30*time.Second, func() error {
		sts, err := p.cores(ctx)
		if err != nil {
			return err
		}
		for _, s := range sts {
			if s.Status != nil && s.Status.Name == "core-b" {
				if s.Status.Role == "primary" && s.Status.Epoch > epoch {
					newEpoch = s.Status.Epoch
					return nil
				}
				return fmt.Errorf("core-b is %s at epoch %d", s.Status.Role, s.Status.Epoch)
			}
		}
		return fmt.Errorf("core-b does not answer: %+v", sts)
	})
	t.Logf("core-b is primary at epoch %d", newEpoch)

	// 5. The chat went on, and nothing acknowledged was lost or doubled.
	rec := w.Wait()
	var after int
	for _, m := range rec.Sent {
		if m.Acked && m.At.After(killed) {
			after++
		}
	}
	t.Logf("%d of %d messages acknowledged, %d of them sent after the kill", rec.Acked(), len(rec.Sent), after)
	// The chat's pause as the clients saw it: from the last acknowledgement
	// before core-a died (the engine's exit time) to the first one after,
	// on either side. Without a fault it is about the send interval.
	before, after1 := acks.around(died)
	if !before.IsZero() && !after1.IsZero() {
		t.Logf("failover pause seen by the clients: %v (first acknowledgement %v after core-a died); longest pause of the run %v",
			after1.Sub(before).Round(time.Millisecond), after1.Sub(died).Round(time.Millisecond), acks.longestGap().Round(time.Millisecond))
	}
	harness.Check(t, ctx, rec, harness.CheckOptions{UCS: ucs, MinAcked: 2 * perSide * 9 / 10,
		FailoverNotices: true, FailoverNoticesInUCS: true})
	// One failover is one reconnect: a handful of notices (the core watch
	// and the chat stream each lose their core once), not a storm.
	reconnecting, reconnected := ag.Seen("reconnecting"), ag.Seen("reconnected")
	t.Logf("agent push channel: %d reconnecting, %d reconnected notices", reconnecting, reconnected)
	if reconnecting > maxReconnectNotices {
		t.Errorf("agent push channel: %d reconnecting notices for one failover, want at most %d", reconnecting, maxReconnectNotices)
	}
	if t.Failed() || tc.noRestart {
		t.Logf("test took %v", time.Since(testStart).Round(time.Millisecond))
		return
	}

	// 6. The old primary, started again, joins as backup of core-b, and the
	// chat still goes on (now replicated to core-a).
	if _, err := p.compose(ctx, "start", "core-a"); err != nil {
		t.Fatalf("start core-a again: %v", err)
	}
	restarted := time.Now()
	waitFor(t, ctx, "core-a back as backup of core-b", 60*time.Second, func() error {
		sts, err := p.cores(ctx)
		if err != nil {
			return err
		}
		return pairFormed(sts, "core-b", "core-a")
	})
	t.Logf("core-a backup of core-b %v after its restart", time.Since(restarted).Round(time.Millisecond))
	text := "customer after the old primary came back " + chat.ChatID
	var index uint64
	waitFor(t, ctx, "a message after core-a's return", 30*time.Second, func() error {
		r, err := chat.Send(ctx, text, "docker-after-return")
		if err != nil {
			return err
		}
		if err := r.Err(); err != nil {
			if r.Retryable() {
				return err
			}
			return fmt.Errorf("%w: %v", errFatal, err)
		}
		index = r.Index
		return nil
	})
	waitFor(t, ctx, "the last message in the UCS transcript", 20*time.Second, func() error {
		tr, err := ucs.Transcript(ctx, chat.ChatID)
		if err != nil {
			return err
		}
		n := 0
		for _, ev := range harness.TranscriptView(tr) {
			if ev.Text == text {
				n++
				if ev.Index != index {
					return fmt.Errorf("%w: %q at index %d, acknowledged at %d", errFatal, text, ev.Index, index)
				}
			}
		}
		if n > 1 {
			return fmt.Errorf("%w: %q %d times in the transcript", errFatal, text, n)
		}
		if n == 0 {
			return fmt.Errorf("%q not in the transcript yet", text)
		}
		return nil
	})
	t.Logf("test took %v", time.Since(testStart).Round(time.Millisecond))
}

// ackClock records when each side's sends were acknowledged.
type ackClock struct {
	mu    sync.Mutex
	times []time.Time
}

// wrap returns side with its acknowledgements recorded.
func (c *ackClock) wrap(side harness.Side) harness.Side { return timedSide{side, c} }

// longestGap returns the longest time between two acknowledgements (of
// either side).
func (c *ackClock) longestGap() time.Duration {
	ts := c.sorted()
	var gap time.Duration
	for i := 1; i < len(ts); i++ {
		gap = max(gap, ts[i].Sub(ts[i-1]))
	}
	return gap
}

// around returns the last acknowledgement before t and the first after it
// (zero when there is none).
func (c *ackClock) around(t time.Time) (before, after time.Time) {
	for _, at := range c.sorted() {
		if at.Before(t) {
			before = at
		} else if after.IsZero() {
			after = at
		}
	}
	return before, after
}

// between counts the acknowledgements from a (included) to b (excluded).
func (c *ackClock) between(a, b time.Time) int {
	n := 0
	for _, at := range c.sorted() {
		if !at.Before(a) && at.Before(b) {
			n++
		}
	}
	return n
}

func (c *ackClock) sorted() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := slices.Clone(c.times)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts
}

type timedSide struct {
	harness.Side
	clock *ackClock
}

func (s timedSide) Send(ctx context.Context, text, cmid string) (uint64, bool, error) {
	idx, retryable, err := s.Side.Send(ctx, text, cmid)
	if err == nil {
		s.clock.mu.Lock()
		s.clock.times = append(s.clock.times, time.Now())
		s.clock.mu.Unlock()
	}
	return idx, retryable, err
}

// errFatal marks a wait condition that can no longer come true.
var errFatal = errors.New("will not happen")

// waitFor polls cond every 100ms until it returns nil; the test fails when
// timeout passes, ctx ends or cond returns an errFatal error.
func waitFor(t *testing.T, ctx context.Context, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := until(ctx, what, timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// until polls cond every 100ms until it returns nil (until returns nil), or
// timeout passes, ctx ends or cond returns an errFatal error (until returns
// an error naming what it waited for). waitFor is until for conditions a
// test cannot go on without.
func until(ctx context.Context, what string, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errFatal) {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("timed out after %v waiting for %s: %w", timeout, what, err)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// pairFormed reports nil when primary serves as primary with backup
// connected to it as its backup.
func pairFormed(sts []coreStatus, primary, backup string) error {
	var p, b bool
	for _, s := range sts {
		if s.Status == nil {
			return fmt.Errorf("%s: %s", s.Addr, s.Error)
		}
		switch s.Status.Name {
		case primary:
			if s.Status.Role != "primary" || s.Status.Backup != backup {
				return fmt.Errorf("%s is %s at epoch %d with backup %q (all: %s)", primary, s.Status.Role, s.Status.Epoch, s.Status.Backup, roles(sts))
			}
			p = true
		case backup:
			if s.Status.Role != "backup" {
				return fmt.Errorf("%s is %s at epoch %d (all: %s)", backup, s.Status.Role, s.Status.Epoch, roles(sts))
			}
			b = true
		}
	}
	if !p || !b {
		return fmt.Errorf("status: %+v", sts)
	}
	return nil
}

// roles says each core's name, role and epoch, or its error.
func roles(sts []coreStatus) string {
	var b strings.Builder
	for i, s := range sts {
		if i > 0 {
			b.WriteString(", ")
		}
		if s.Status == nil {
			fmt.Fprintf(&b, "%s: %s", s.Addr, s.Error)
			continue
		}
		fmt.Fprintf(&b, "%s %s@%d", s.Status.Name, s.Status.Role, s.Status.Epoch)
	}
	return b.String()
}

// epochOf returns the epoch of the named core (0 if it does not answer).
func epochOf(sts []coreStatus, name string) uint64 {
	for _, s := range sts {
		if s.Status != nil && s.Status.Name == name {
			return s.Status.Epoch
		}
	}
	return 0
}
