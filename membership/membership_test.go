package membership

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
	"github.com/hashicorp/memberlist"
)

// testConfig is DefaultConfig on a free loopback port.
func testConfig(name string, join ...string) Config {
	c := DefaultConfig()
	c.Name = name
	c.BindAddr = "127.0.0.1:0"
	c.Join = join
	return c
}

func coreMeta(role string, epoch uint64) Meta {
	return Meta{Kind: KindCore, Role: role, Epoch: epoch, GRPCAddr: "127.0.0.1:7101", HTTPAddr: "127.0.0.1:7102"}
}

// startNode starts a member and shuts it down at the end of the test.
func startNode(t *testing.T, cfg Config, meta Meta) *Membership {
	t.Helper()
	m, err := New(context.Background(), cfg, meta, telemetry.Discard())
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		<-tick.C
	}
}

// stateOf is the state node m sees for name ("" if unknown).
func stateOf(m *Membership, name string) string {
	mb, ok := m.Member(name)
	if !ok {
		return ""
	}
	return mb.State.String()
}

// waitEvent reads ch until an event of typ for name arrives.
func waitEvent(t *testing.T, ch <-chan Event, typ EventType, name string, within time.Duration) Event {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("event channel closed while waiting for %s of %s", typ, name)
			}
			if ev.Type == typ && ev.Member.Name == name {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no %s event for %s within %v", typ, name, within)
		}
	}
}

// threeNodes starts a, b (seed a) and c (seed b) and waits until every node
// sees all three alive.
func threeNodes(t *testing.T, mutate func(*Config)) (a, b, c *Membership) {
	t.Helper()
	ca := testConfig("a")
	if mutate != nil {
		mutate(&ca)
	}
	a = startNode(t, ca, coreMeta(RolePrimary, 1))
	cb := testConfig("b", a.Local().Addr)
	if mutate != nil {
		mutate(&cb)
	}
	b = startNode(t, cb, coreMeta(RoleBackup, 1))
	cc := testConfig("c", b.Local().Addr)
	if mutate != nil {
		mutate(&cc)
	}
	c = startNode(t, cc, Meta{Kind: KindWitness, HTTPAddr: "127.0.0.1:7211"})
	for _, m := range []*Membership{a, b, c} {
		waitFor(t, 5*time.Second, m.cfg.Name+" sees three alive members", func() bool {
			ms := m.Members()
			if len(ms) != 3 {
				return false
			}
			for _, mb := range ms {
				if mb.State != StateAlive {
					return false
				}
			}
			return true
		})
	}
	return a, b, c
}

func TestJoinAndMetaPropagates(t *testing.T) {
	a, b, c := threeNodes(t, nil)

	ms := c.Members()
	if ms[0].Name != "a" || ms[1].Name != "b" || ms[2].Name != "c" {
		t.Fatalf("Members not sorted by name: %+v", ms)
	}
	if got := ms[0].Meta; got != coreMeta(RolePrimary, 1) {
		t.Fatalf("c sees a's meta %+v, want %+v", got, coreMeta(RolePrimary, 1))
	}
	if l := a.Local(); l.Name != "a" || l.Meta.Role != RolePrimary || l.Addr == "" {
		t.Fatalf("Local() = %+v", l)
	}

	events, cancel := c.Subscribe()
	defer cancel()
	promoted := coreMeta(RolePrimary, 2)
	promoted.GRPCAddr = "127.0.0.1:7111"
	ctx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	if err := b.SetMeta(ctx, promoted); err != nil {
		t.Fatalf("SetMeta: %v", err)
	}
	ev := waitEvent(t, events, EventUpdated, "b", 2*time.Second)
	if ev.Member.Meta != promoted || ev.Member.State != StateAlive {
		t.Fatalf("update event carries %+v", ev.Member)
	}
	for _, m := range []*Membership{a, c} {
		waitFor(t, 2*time.Second, m.cfg.Name+" sees b's new meta", func() bool {
			mb, _ := m.Member("b")
			return mb.Meta == promoted
		})
	}
	if got := b.Local().Meta; got != promoted {
		t.Fatalf("b.Local().Meta = %+v", got)
	}
}

func TestShutdownWithoutLeaveIsFailed(t *testing.T) {
	a, b, c := threeNodes(t, nil)
	events, cancel := a.Subscribe()
	defer cancel()
	if err := c.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ev := waitEvent(t, events, EventFailed, "c", 5*time.Second)
	if ev.Member.State != StateDead || ev.Member.Meta.Kind != KindWitness {
		t.Fatalf("failed event carries %+v", ev.Member)
	}
	waitFor(t, 5*time.Second, "b sees c dead", func() bool { return stateOf(b, "c") == "dead" })
	if got := stateOf(a, "c"); got != "dead" {
		t.Fatalf("a sees c %q after the event, want dead", got)
	}
	// A dead member stays listed as dead.
	if n := len(a.Members()); n != 3 {
		t.Fatalf("a lists %d members, want 3 (c as dead)", n)
	}
}

func TestLeaveIsLeft(t *testing.T) {
	a, b, c := threeNodes(t, nil)
	events, cancel := a.Subscribe()
	defer cancel()
	ctx, done := context.WithTimeout(context.Background(), 2*time.Second)
	defer done()
	if err := c.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	ev := waitEvent(t, events, EventLeft, "c", 5*time.Second)
	if ev.Member.State != StateLeft {
		t.Fatalf("left event carries %+v", ev.Member)
	}
	waitFor(t, 5*time.Second, "b sees c left", func() bool { return stateOf(b, "c") == "left" })
	if err := c.SetMeta(ctx, coreMeta(RoleBackup, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetMeta after Leave = %v, want ErrClosed", err)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatalf("Shutdown after Leave: %v", err)
	}
}

func TestStartOrderDoesNotMatter(t *testing.T) {
	// b's gossip port is not listening when a starts with it as seed.
	b0 := startNode(t, testConfig("probe-port"), coreMeta(RoleBackup, 0))
	bAddr := b0.Local().Addr
	if err := b0.Shutdown(); err != nil {
		t.Fatal(err)
	}
	a := startNode(t, testConfig("a", bAddr), coreMeta(RolePrimary, 1))
	if n := len(a.Members()); n != 1 {
		t.Fatalf("a alone sees %d members", n)
	}
	cb := testConfig("b")
	cb.BindAddr = bAddr
	b := startNode(t, cb, coreMeta(RoleBackup, 1))
	waitFor(t, 5*time.Second, "a and b find each other through a's retries", func() bool {
		return stateOf(a, "b") == "alive" && stateOf(b, "a") == "alive"
	})
}

func TestRestartedMemberRejoins(t *testing.T) {
	a, b, c := threeNodes(t, nil)
	cAddr := c.Local().Addr
	_ = c.Shutdown()
	waitFor(t, 5*time.Second, "a sees c dead", func() bool { return stateOf(a, "c") == "dead" })
	events, cancel := a.Subscribe()
	defer cancel()
	cc := testConfig("c", b.Local().Addr)
	cc.BindAddr = cAddr
	startNode(t, cc, Meta{Kind: KindWitness})
	ev := waitEvent(t, events, EventJoined, "c", 5*time.Second)
	if ev.Member.State != StateAlive {
		t.Fatalf("rejoin event carries %+v", ev.Member)
	}
}

func TestEncryption(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	other := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210"))
	a, b, c := threeNodes(t, func(c *Config) { c.EncryptKey = key })
	seed := a.Local().Addr
	events, cancel := a.Subscribe()
	defer cancel()
	if err := b.SetMeta(context.Background(), coreMeta(RolePrimary, 5)); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, EventUpdated, "b", 2*time.Second)
	if err := c.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, EventLeft, "c", 5*time.Second)

	for _, tc := range []struct{ name, key string }{{"other key", other}, {"no key", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("intruder")
			cfg.EncryptKey = tc.key
			x := startNode(t, cfg, Meta{Kind: KindWitness})
			n, err := x.ml.Join([]string{seed})
			if err == nil || n != 0 {
				t.Fatalf("join with %s: contacted %d, err %v; want refusal", tc.name, n, err)
			}
			if _, ok := a.Member("intruder"); ok {
				t.Fatalf("a lists the intruder")
			}
		})
	}
}

// TestKeyringRotation rotates the gossip key the documented way, one member
// restart at a time, and checks after every restart that the restarted
// member rejoins and that a member with only the retired key is refused at
// the end.
func TestKeyringRotation(t *testing.T) {
	oldKey := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	newKey := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
	a, b, c := threeNodes(t, func(c *Config) { c.EncryptKey = oldKey })
	nodes := map[string]*Membership{"a": a, "b": b, "c": c}
	seedOf := func(name string) string {
		for n, m := range nodes {
			if n != name {
				return m.Local().Addr
			}
		}
		return ""
	}
	restart := func(name, primary string, extra ...string) {
		t.Helper()
		m := nodes[name]
		addr := m.Local().Addr
		meta := m.Local().Meta
		if err := m.Leave(context.Background()); err != nil {
			t.Fatal(err)
		}
		_ = m.Shutdown()
		cfg := testConfig(name, seedOf(name))
		cfg.BindAddr = addr
		cfg.EncryptKey, cfg.ExtraKeys = primary, extra
		nodes[name] = startNode(t, cfg, meta)
		for n, o := range nodes {
			waitFor(t, 10*time.Second, n+" sees "+name+" back", func() bool {
				mb, ok := o.Member(name)
				return ok && mb.State == StateAlive
			})
		}
	}
	for _, step := range []struct{ primary, extra string }{{oldKey, newKey}, {newKey, oldKey}, {newKey, ""}} {
		for _, name := range []string{"a", "b", "c"} {
			if step.extra == "" {
				restart(name, step.primary)
			} else {
				restart(name, step.primary, step.extra)
			}
		}
	}
	cfg := testConfig("retired")
	cfg.EncryptKey = oldKey
	x := startNode(t, cfg, Meta{Kind: KindWitness})
	if n, err := x.ml.Join([]string{nodes["a"].Local().Addr}); err == nil || n != 0 {
		t.Fatalf("a member with the retired key joined: contacted %d, err %v", n, err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	big := coreMeta(RolePrimary, 1)
	big.GRPCAddr = strings.Repeat("h", 600) + ":7101"
	tests := []struct {
		name string
		cfg  func(*Config)
		meta Meta
		want error
		text string
	}{
		{"meta too large", nil, big, ErrMetaTooLarge, "512"},
		{"bad kind", nil, Meta{Kind: "robot"}, ErrBadMeta, "kind"},
		{"key not base64", func(c *Config) { c.EncryptKey = "not base64!" }, coreMeta("", 0), ErrBadConfig, "base64"},
		{"key wrong length", func(c *Config) { c.EncryptKey = base64.StdEncoding.EncodeToString([]byte("short")) }, coreMeta("", 0), ErrBadConfig, "16, 24 or 32"},
		{"no name", func(c *Config) { c.Name = "" }, coreMeta("", 0), ErrBadConfig, "name"},
		{"bind without port", func(c *Config) { c.BindAddr = "127.0.0.1" }, coreMeta("", 0), ErrBadConfig, "gossip-bind"},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost:0" }, coreMeta("", 0), ErrBadConfig, "IP address"},
		{"bind unspecified", func(c *Config) { c.BindAddr = "0.0.0.0:0" }, coreMeta("", 0), ErrBadConfig, "concrete"},
		{"bad seed", func(c *Config) { c.Join = []string{"nope"} }, coreMeta("", 0), ErrBadConfig, "gossip-join"},
		{"advertise unspecified", func(c *Config) { c.BindAddr = "0.0.0.0:0"; c.AdvertiseAddr = "0.0.0.0:7103" }, coreMeta("", 0), ErrBadAdvertise, "concrete"},
		{"advertise host name", func(c *Config) { c.AdvertiseAddr = "core-a.hachat:7103" }, coreMeta("", 0), ErrBadAdvertise, "IP address"},
		{"advertise without port", func(c *Config) { c.AdvertiseAddr = "10.0.0.1" }, coreMeta("", 0), ErrBadConfig, "gossip-advertise"},
		{"advertise port 0", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:0" }, coreMeta("", 0), ErrBadConfig, "1-65535"},
		{"timeout above interval", func(c *Config) { c.ProbeTimeout = time.Second }, coreMeta("", 0), ErrBadConfig, "probe-timeout"},
		{"zero interval", func(c *Config) { c.ProbeInterval = 0 }, coreMeta("", 0), ErrBadConfig, "probe-interval"},
		{"zero suspicion", func(c *Config) { c.SuspicionMult = 0 }, coreMeta("", 0), ErrBadConfig, "suspicion"},
		{"zero gossip", func(c *Config) { c.GossipInterval = 0 }, coreMeta("", 0), ErrBadConfig, "gossip-interval"},
		{"negative indirect", func(c *Config) { c.IndirectChecks = -1 }, coreMeta("", 0), ErrBadConfig, "indirect"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("x")
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			tel := telemetry.Discard()
			m, err := New(context.Background(), cfg, tc.meta, tel)
			if err == nil {
				m.Shutdown()
				t.Fatalf("New succeeded, want %v", tc.want)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("New error %q, want %v mentioning %q", err, tc.want, tc.text)
			}
			// Nothing was left registered: a second, valid start works.
			ok, err := New(context.Background(), testConfig("y"), coreMeta("", 0), tel)
			if err != nil {
				t.Fatalf("valid New after a rejected one: %v", err)
			}
			ok.Shutdown()
		})
	}
}

func TestSetMetaRejectsBadMetaAndKeepsOld(t *testing.T) {
	a := startNode(t, testConfig("a"), coreMeta(RolePrimary, 3))
	big := coreMeta(RolePrimary, 4)
	big.HTTPAddr = strings.Repeat("x", 520) + ":1"
	if err := a.SetMeta(context.Background(), big); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("SetMeta(too large) = %v, want ErrMetaTooLarge", err)
	}
	if err := a.SetMeta(context.Background(), Meta{Kind: KindWitness, Role: RolePrimary}); !errors.Is(err, ErrBadMeta) {
		t.Fatalf("SetMeta(witness with role) = %v, want ErrBadMeta", err)
	}
	if got := a.Local().Meta; got != coreMeta(RolePrimary, 3) {
		t.Fatalf("meta changed to %+v by rejected updates", got)
	}
}

func TestSubscribeUnsubscribeAndShutdownClose(t *testing.T) {
	a := startNode(t, testConfig("a"), coreMeta(RolePrimary, 1))
	ch1, cancel1 := a.Subscribe()
	ch2, _ := a.Subscribe()
	cancel1()
	cancel1() // idempotent
	if _, ok := <-ch1; ok {
		t.Fatal("unsubscribed channel not closed")
	}
	if err := a.SetMeta(context.Background(), coreMeta(RolePrimary, 2)); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, ch2, EventUpdated, "a", time.Second)
	if ev.Member.Meta.Epoch != 2 {
		t.Fatalf("self update event %+v", ev)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	for range ch2 {
	}
	ch3, _ := a.Subscribe()
	if _, ok := <-ch3; ok {
		t.Fatal("Subscribe after Shutdown returned an open channel")
	}
	if err := a.SetMeta(context.Background(), coreMeta(RolePrimary, 3)); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetMeta after Shutdown = %v, want ErrClosed", err)
	}
}

func TestSlowSubscriberDropsWithoutBlocking(t *testing.T) {
	a := startNode(t, testConfig("a"), coreMeta(RolePrimary, 1))
	slow, cancel := a.Subscribe()
	defer cancel()
	fast, cancelFast := a.Subscribe()
	defer cancelFast()
	// The fast subscriber reads each update before the next is made: a
	// reader that merely runs concurrently can fall a whole buffer behind
	// on a loaded machine and lose events itself. The slow one never reads,
	// so its buffer fills and the last updates must be dropped for it
	// without holding up SetMeta or the fast subscriber.
	n := subscriberBuffer + 10
	for i := range n {
		epoch := uint64(i + 2)
		done := make(chan error, 1)
		go func() { done <- a.SetMeta(context.Background(), coreMeta(RolePrimary, epoch)) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("SetMeta of update %d blocked (behind the full slow subscriber?)", i+1)
		}
		ev := waitEvent(t, fast, EventUpdated, "a", 5*time.Second)
		if ev.Member.Meta.Epoch != epoch {
			t.Fatalf("fast subscriber got epoch %d for update %d, want %d", ev.Member.Meta.Epoch, i+1, epoch)
		}
	}
	if len(slow) != subscriberBuffer {
		t.Fatalf("slow subscriber holds %d events, want a full buffer of %d", len(slow), subscriberBuffer)
	}
}

func TestPrimaryAndVoters(t *testing.T) {
	mk := func(name, kind, role string, epoch uint64, st State) Member {
		return Member{Name: name, Meta: Meta{Kind: kind, Role: role, Epoch: epoch, HTTPAddr: "127.0.0.1:1"}, State: st}
	}
	tests := []struct {
		name    string
		members []Member
		want    string
	}{
		{"none", nil, ""},
		{"one primary", []Member{mk("a", KindCore, RolePrimary, 1, StateAlive), mk("b", KindCore, RoleBackup, 1, StateAlive)}, "a"},
		{"newest epoch wins", []Member{mk("a", KindCore, RolePrimary, 1, StateAlive), mk("b", KindCore, RolePrimary, 2, StateAlive)}, "b"},
		{"dead primary skipped", []Member{mk("a", KindCore, RolePrimary, 3, StateDead), mk("b", KindCore, RolePrimary, 2, StateAlive)}, "b"},
		{"suspect still counts", []Member{mk("a", KindCore, RolePrimary, 3, StateSuspect)}, "a"},
		{"left skipped", []Member{mk("a", KindCore, RolePrimary, 3, StateLeft)}, ""},
		{"tie to first name", []Member{mk("b", KindCore, RolePrimary, 2, StateAlive), mk("a", KindCore, RolePrimary, 2, StateAlive)}, "a"},
		{"only cores", []Member{mk("x", KindXDS, "", 9, StateAlive)}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Primary(tc.members)
			if ok != (tc.want != "") || got.Name != tc.want {
				t.Fatalf("Primary = %q, %v; want %q", got.Name, ok, tc.want)
			}
		})
	}

	a, b, _ := threeNodes(t, nil)
	v := a.Voters()
	if len(v) != 1 || v[0].Name != "c" {
		t.Fatalf("Voters = %+v, want the witness c", v)
	}
	if p, ok := Primary(b.Members()); !ok || p.Name != "a" {
		t.Fatalf("Primary(b's view) = %+v, %v", p, ok)
	}
}

// TestGossipAdvertise: a member bound to 0.0.0.0 (as in a Kubernetes pod)
// announces --gossip-advertise, not its bind address: the others see and
// probe it there. 127.0.0.2 is on loopback too but is not the address the
// second member joined through, so a member seen at 127.0.0.2 was seen at
// its advertised address.
func TestGossipAdvertise(t *testing.T) {
	// memberlist needs one port free for both TCP and UDP on every address;
	// another process may take the port between the probe and the bind, so
	// a bind refused with "address already in use" tries another port.
	var a *Membership
	var acfg Config
	var port int
	for try := 0; a == nil; try++ {
		ln, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = ln.LocalAddr().(*net.UDPAddr).Port
		ln.Close()
		acfg = testConfig("a")
		acfg.BindAddr = fmt.Sprintf("0.0.0.0:%d", port)
		acfg.AdvertiseAddr = fmt.Sprintf("127.0.0.2:%d", port)
		m, err := New(context.Background(), acfg, coreMeta(RolePrimary, 1), telemetry.Discard())
		if err != nil {
			if try < 10 && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")) {
				continue
			}
			t.Fatalf("New(a): %v", err)
		}
		t.Cleanup(func() { _ = m.Shutdown() })
		a = m
	}
	if got := a.Local().Addr; got != acfg.AdvertiseAddr {
		t.Fatalf("local address %q, want the advertised %q", got, acfg.AdvertiseAddr)
	}
	b := startNode(t, testConfig("b", fmt.Sprintf("127.0.0.1:%d", port)), coreMeta(RoleBackup, 1))
	waitFor(t, 5*time.Second, "b sees a alive at its advertised address", func() bool {
		for _, m := range b.Members() {
			if m.Name == "a" && m.State == StateAlive && m.Addr == acfg.AdvertiseAddr {
				return true
			}
		}
		return false
	})
}

// TestLeaveIntentAfterTheDeadMessage: a leaver's intent (TCP) can be handled
// after its dead message (UDP) under load; the member is then recorded left,
// not failed, and subscribers hear EventLeft after EventFailed.
func TestLeaveIntentAfterTheDeadMessage(t *testing.T) {
	a := startNode(t, testConfig("a"), coreMeta(RolePrimary, 1))
	events, cancel := a.Subscribe()
	defer cancel()
	d := &delegate{m: a}
	z := &memberlist.Node{Name: "z", Addr: net.ParseIP("127.0.0.1"), Port: 1}
	d.NotifyJoin(z)
	waitEvent(t, events, EventJoined, "z", time.Second)
	d.NotifyLeave(z) // the dead message first
	waitEvent(t, events, EventFailed, "z", time.Second)
	intent, err := json.Marshal(leaveIntent{Leave: "z"})
	if err != nil {
		t.Fatal(err)
	}
	d.NotifyMsg(intent) // then the intent
	ev := waitEvent(t, events, EventLeft, "z", time.Second)
	if ev.Member.State != StateLeft {
		t.Fatalf("left event carries %+v", ev.Member)
	}
	if got := stateOf(a, "z"); got != "left" {
		t.Fatalf("z is %q, want left", got)
	}
}
