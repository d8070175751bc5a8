package interaction

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/coord/coordtest"
	"github.com/hachat/hachat/telemetry"
)

// instance is one Interaction Server of an HA pair, with a crash switch.
type instance struct {
	srv   *Server
	url   string
	crash func() // stops the instance without a clean hand-over
	done  chan error
}

// haPair serves two Interaction Servers on one fake core that share the
// state store each newStore call returns (one store per instance: an etcd
// client each, or the same MemStore).
type haPair struct {
	*env
	inst [2]*instance
}

func startInstance(t *testing.T, e *env, st StateStore, cfg Config, crash func()) *instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	srv, err := New(cfg, e.cc, telemetry.Discard(), WithStateStore(st, url, nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{srv: srv, url: url, done: make(chan error, 1)}
	in.crash = func() {
		if crash != nil {
			crash()
		}
		cancel()
	}
	go func() { in.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-in.done:
		case <-time.After(10 * time.Second):
			t.Error("instance did not stop")
		}
	})
	return in
}

func newHAPair(t *testing.T, newStore func() (StateStore, func())) *haPair {
	t.Helper()
	f := newFakeCore(testToken)
	dial := serveFake(t, f)
	raw := chatpb.NewChatClient(dialFake(t, dial))
	cfg := DefaultConfig()
	cfg.ServiceToken = testToken
	cfg.HTTP = "127.0.0.1:0"
	cfg.Accounts = writeTestAccounts(t)
	cfg.OfferTimeout = time.Minute
	e := &env{t: t, core: f, cc: raw}
	p := &haPair{env: e}
	for i := range p.inst {
		st, crash := newStore()
		p.inst[i] = startInstance(t, e, st, cfg, crash)
		if i == 0 {
			e.waitFor("the first instance leads", p.inst[0].srv.Leading)
		}
	}
	e.srv, e.url = p.inst[1].srv, p.inst[1].url // the API through the follower
	e.waitFor("core watch up at the leader", func() bool {
		s := p.inst[0].srv
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.coreUp
	})
	return p
}

func memStores() func() (StateStore, func()) {
	m := NewMemStore()
	return func() (StateStore, func()) { return m, nil }
}

func etcdStores(t *testing.T) func() (StateStore, func()) {
	ep := coordtest.Start(t)
	return func() (StateStore, func()) {
		cli := coordtest.Client(t, ep)
		// kill -9: the client vanishes, the lease lapses by itself.
		return NewEtcdStore(cli, "/test/interaction/", time.Second), func() { cli.Close() }
	}
}

// offeredTo returns the agent the chat is offered to at srv.
func chatAt(s *Server, chat string) (ChatView, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.router.Chat(chat)
}

// TestTakeOver kills the leading instance after agents logged in (one
// through each instance), went ready and one was offered a chat: the other
// instance takes over with the same tokens, the pending offer is accepted
// through it, and the chat goes to exactly that agent. With no takeover
// (the saved state not restored) the tokens answer 401 and the accept 404.
func TestTakeOver(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stores func(t *testing.T) func() (StateStore, func())
	}{
		{"memory", func(*testing.T) func() (StateStore, func()) { return memStores() }},
		{"etcd", etcdStores},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newHAPair(t, tc.stores(t))
			leader, follower := p.inst[0], p.inst[1]
			if follower.srv.Leading() {
				t.Fatal("two instances lead")
			}
			// Agent a logs in through the follower (forwarded), b through the leader.
			ta := p.login("a", "agent")
			p.url = leader.url
			tb := p.login("b", "agent")
			p.url = follower.url
			p.mustDo("POST", "/agent/v1/ready", ta, nil)
			p.mustDo("POST", "/agent/v1/ready", tb, nil)
			cust := p.customer("Carol")
			chat := cust.GetSessionId()
			var offered string
			p.waitFor("the chat offered", func() bool {
				cv, ok := chatAt(leader.srv, chat)
				offered = cv.Agent
				return ok && cv.State == ChatOffered
			})
			other := map[string]string{"a": tb, "b": ta}[offered]
			mine := map[string]string{"a": ta, "b": tb}[offered]

			leader.crash()
			p.waitFor("the follower leads", follower.srv.Leading)
			if cv, ok := chatAt(follower.srv, chat); !ok || cv.State != ChatOffered || cv.Agent != offered {
				t.Fatalf("after takeover: chat %+v (found %v), want offered to %s", cv, ok, offered)
			}
			// The other agent's token works on the new leader; it cannot take the offer.
			p.mustDo("GET", "/agent/v1/state", other, nil)
			if code, out := p.do("POST", "/agent/v1/offers/"+chat+"/accept", other, nil); code != http.StatusNotFound {
				t.Fatalf("accept by the agent without the offer: %d %v", code, out)
			}
			p.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", mine, nil)
			cv, _ := chatAt(follower.srv, chat)
			if cv.State != ChatAssigned || cv.Agent != offered {
				t.Fatalf("after accept: %+v, want assigned to %s", cv, offered)
			}
			p.waitFor("the agent joined at the core", func() bool {
				n := 0
				for _, ev := range p.core.log(chat) {
					if ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED && ev.GetFrom().GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT {
						n++
					}
				}
				return n == 1
			})
			// The customer's message reaches the agent through the new leader's push channel.
			push := p.openPush(mine)
			p.customerSay(cust, "hello after takeover", "m1")
			push.wait("the customer's message", chatEv(chat, "Message", "hello after takeover"))
		})
	}
}

// TestRestoreRefusesBadState: a saved router state comes back as it was
// and routes on; one that contradicts itself is refused.
func TestRestoreRefusesBadState(t *testing.T) {
	now := time.Unix(1000, 0)
	good := func() RouterState {
		r := NewRouter(1, time.Minute)
		_ = r.Login("a", "A", RoleAgent, now)
		_ = r.Login("b", "B", RoleAgent, now)
		_, _ = r.SetReady("a", true, now)
		r.AddChat(ChatInfo{ID: "c1"}, now)
		r.AddChat(ChatInfo{ID: "c2"}, now)
		_, _ = r.Accept("a", "c1", now)
		_, _ = r.SetReady("b", true, now)
		return r.State()
	}
	for _, tc := range []struct {
		name string
		mod  func(*RouterState)
		want error
	}{
		{"as saved", func(*RouterState) {}, nil},
		{"offer held by nobody", func(s *RouterState) { s.Agents[1].Offer = "" }, ErrBadState},
		{"chat held by the wrong agent", func(s *RouterState) { s.Chats[0].Agent = "b" }, ErrBadState},
		{"agent twice", func(s *RouterState) { s.Agents[1].ID = "a" }, ErrBadState},
		{"chat beyond the counter", func(s *RouterState) { s.Seq = 1 }, ErrBadState},
		{"unknown state", func(s *RouterState) { s.Chats[1].State = "lost" }, ErrBadState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := good()
			tc.mod(&st)
			r, err := RestoreRouter(1, time.Minute, st)
			if !errors.Is(err, tc.want) {
				t.Fatalf("restore: %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			if got, want := r.State(), good(); !stateEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
			// The restored router routes on: b, ready, already holds c2's offer.
			if av, _ := r.Agent("b"); av.Offer != "c2" {
				t.Fatalf("b's offer after restore: %+v", av)
			}
		})
	}
}

func stateEqual(a, b RouterState) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// TestEtcdStoreFencing holds the StateStore contract against a real etcd:
// one leader at a time, the second campaign waits until the first term
// ends (lease lapsed after its client vanished), and the deposed term's
// save is refused and does not overwrite the new leader's.
func TestEtcdStoreFencing(t *testing.T) {
	ep := coordtest.Start(t)
	cliA, cliB := coordtest.Client(t, ep), coordtest.Client(t, ep)
	stA, stB := NewEtcdStore(cliA, "/t/", time.Second), NewEtcdStore(cliB, "/t/", time.Second)
	ctx := context.Background()
	ta, err := stA.Campaign(ctx, "http://a")
	if err != nil {
		t.Fatal(err)
	}
	if err := ta.Save(ctx, []byte(`{"by":"a"}`)); err != nil {
		t.Fatal(err)
	}
	if l, _ := stB.Leader(ctx); l != "http://a" {
		t.Fatalf("leader %q, want http://a", l)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = stB.Campaign(short, "http://b")
	cancel()
	if err == nil {
		t.Fatal("a second instance won while the first leads")
	}
	won := make(chan Term, 1)
	go func() {
		tb, err := stB.Campaign(ctx, "http://b")
		if err != nil {
			t.Error(err)
		}
		won <- tb
	}()
	// A stale term: a's key is deleted under it (as when its lease lapsed
	// during a pause), then a tries to save.
	if _, err := cliB.Delete(ctx, "/t/leader/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	var tb Term
	select {
	case tb = <-won:
	case <-time.After(10 * time.Second):
		t.Fatal("b did not win after a's key went")
	}
	if err := ta.Save(ctx, []byte(`{"by":"a-stale"}`)); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed save: %v, want ErrNotLeader", err)
	}
	if err := tb.Save(ctx, []byte(`{"by":"b"}`)); err != nil {
		t.Fatal(err)
	}
	got, _ := stA.Load(ctx)
	if !strings.Contains(string(got), `"b"`) {
		t.Fatalf("saved state %s, want b's", got)
	}
	if l, _ := stA.Leader(ctx); l != "http://b" {
		t.Fatalf("leader %q, want http://b", l)
	}
}

// TestDeposedLeaderFollowsAgain: a leader whose term ends (its lease lost
// while it still runs) stops routing, drops what it held and forwards
// again; the other instance takes over with the saved state, and the
// token works through both instances.
func TestDeposedLeaderFollowsAgain(t *testing.T) {
	m := NewMemStore()
	p := newHAPair(t, func() (StateStore, func()) { return m, nil })
	first, second := p.inst[0], p.inst[1]
	tok := p.login("a", "agent")
	p.mustDo("POST", "/agent/v1/ready", tok, nil)
	m.Depose()
	// One instance leads again, and it is the one the store names: the
	// deposed instance can still believe it leads for a moment after the
	// other won in the store but before that one has restored and leads
	// itself (requests to it then get "no leader right now, retry").
	var now *instance
	p.waitFor("one instance leads again, the one the store names", func() bool {
		if first.srv.Leading() == second.srv.Leading() {
			return false
		}
		now = second
		if first.srv.Leading() {
			now = first // the deposed one may win the next election itself
		}
		l, _ := m.Leader(context.Background())
		return l == now.url
	})
	p.waitFor("the saved state restored", func() bool {
		now.srv.mu.Lock()
		defer now.srv.mu.Unlock()
		av, ok := now.srv.router.Agent("a")
		return ok && av.Ready
	})
	for _, in := range p.inst {
		p.url = in.url
		p.mustDo("GET", "/agent/v1/state", tok, nil)
	}
	// The deposed instance drops its state once it notices its term ended,
	// which can come just after the other one leads: wait for it (never
	// dropping fails here).
	p.waitFor("the instance that follows holds no agents", func() bool {
		for _, in := range p.inst {
			if in.srv.Leading() {
				continue
			}
			in.srv.mu.Lock()
			n := len(in.srv.router.agents)
			in.srv.mu.Unlock()
			if n != 0 {
				return false
			}
		}
		return true
	})
}

// TestDeposedLeaderCannotAccept: an instance whose term ended without it
// noticing yet (a pause longer than its lease) answers an accept with 503
// and never joins the chat at the core; the offer goes back to its queue.
func TestDeposedLeaderCannotAccept(t *testing.T) {
	m := NewMemStore()
	p := newHAPair(t, func() (StateStore, func()) { return m, nil })
	leader := p.inst[0]
	p.url = leader.url
	tok := p.login("a", "agent")
	p.mustDo("POST", "/agent/v1/ready", tok, nil)
	chat := p.customer("Carol").GetSessionId()
	p.waitFor("the chat offered", func() bool {
		cv, ok := chatAt(leader.srv, chat)
		return ok && cv.State == ChatOffered
	})
	// The term ends at the store while the instance still holds it (as
	// after a pause): its saves are refused.
	m.mu.Lock()
	m.leader = nil
	m.mu.Unlock()
	code, out := p.do("POST", "/agent/v1/offers/"+chat+"/accept", tok, nil)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("accept at a deposed leader: %d %v, want 503", code, out)
	}
	for _, ev := range p.core.log(chat) {
		if ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED && ev.GetFrom().GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT {
			t.Fatalf("a deposed leader joined the chat at the core: %v", ev)
		}
	}
}

// TestUnchangedStateNotWritten: a call that changes nothing (ready when
// ready) is not written to the store again; one that changes the state is.
func TestUnchangedStateNotWritten(t *testing.T) {
	m := NewMemStore()
	p := newHAPair(t, func() (StateStore, func()) { return m, nil })
	saves := p.inst[0].srv.metrics.stateSaves
	tok := p.login("a", "agent")
	p.mustDo("POST", "/agent/v1/ready", tok, nil)
	ok := testutil.ToFloat64(saves.WithLabelValues("ok"))
	p.mustDo("POST", "/agent/v1/ready", tok, nil)
	if got := testutil.ToFloat64(saves.WithLabelValues("ok")); got != ok {
		t.Errorf("ready again wrote the state: %v saves, want %v", got, ok)
	}
	if testutil.ToFloat64(saves.WithLabelValues("unchanged")) == 0 {
		t.Error("no save counted as unchanged")
	}
	p.mustDo("POST", "/agent/v1/notready", tok, nil)
	if got := testutil.ToFloat64(saves.WithLabelValues("ok")); got != ok+1 {
		t.Errorf("not ready: %v saves, want %v", got, ok+1)
	}
}

// TestIneligibleLeaderResigns: an instance cut off from the chat cores
// (SetEligible(false), from its sidecar's death) resigns, the other leads
// from the saved state, and the cut-off one does not campaign until it is
// eligible again; both instances still answer the agent API.
func TestIneligibleLeaderResigns(t *testing.T) {
	p := newHAPair(t, memStores())
	first, second := p.inst[0], p.inst[1]
	tok := p.login("a", "agent")
	p.mustDo("POST", "/agent/v1/ready", tok, nil)
	first.srv.SetEligible(false)
	p.waitFor("the second instance leads", second.srv.Leading)
	if first.srv.Leading() {
		t.Fatal("the cut-off instance still leads")
	}
	p.waitFor("the saved state restored", func() bool {
		second.srv.mu.Lock()
		defer second.srv.mu.Unlock()
		av, ok := second.srv.router.Agent("a")
		return ok && av.Ready
	})
	// The second one gives up the lead: the cut-off one must not take it.
	second.srv.SetEligible(false)
	p.waitFor("the second instance resigns", func() bool { return !second.srv.Leading() })
	time.Sleep(300 * time.Millisecond) // nothing to wait on: no one may lead
	if first.srv.Leading() || second.srv.Leading() {
		t.Fatal("an ineligible instance took the lead")
	}
	first.srv.SetEligible(true)
	p.waitFor("the first instance leads again", first.srv.Leading)
	for _, in := range p.inst {
		p.url = in.url
		p.mustDo("GET", "/agent/v1/state", tok, nil)
	}
}

// failFirstTerm is a MemStore whose first term cannot save (lost at once,
// as when etcd's lease lapsed during the takeover) and whose later
// campaigns wait for release.
type failFirstTerm struct {
	*MemStore
	campaigns atomic.Int32
	release   chan struct{}
}

type unsavableTerm struct{ Term }

func (unsavableTerm) Save(context.Context, []byte) error { return ErrNotLeader }

func (f *failFirstTerm) Campaign(ctx context.Context, addr string) (Term, error) {
	if f.campaigns.Add(1) > 1 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.release:
		}
		return f.MemStore.Campaign(ctx, addr)
	}
	t, err := f.MemStore.Campaign(ctx, addr)
	if err != nil {
		return nil, err
	}
	return unsavableTerm{t}, nil
}

// TestFailedTakeoverFollows: an instance whose takeover fails (its first
// save refused) resigns and follows; it must not go on answering as the
// leader with an empty state, which refused every token with 401 and made
// each desktop log in again (hachat chaos --seed 2026: 1,200 refusals in
// 40 s at interaction-2).
func TestFailedTakeoverFollows(t *testing.T) {
	f := newFakeCore(testToken)
	raw := chatpb.NewChatClient(dialFake(t, serveFake(t, f)))
	cfg := DefaultConfig()
	cfg.ServiceToken = testToken
	cfg.HTTP = "127.0.0.1:0"
	cfg.Accounts = writeTestAccounts(t)
	e := &env{t: t, core: f, cc: raw}
	st := &failFirstTerm{MemStore: NewMemStore(), release: make(chan struct{})}
	in := startInstance(t, e, st, cfg, nil)
	e.srv, e.url = in.srv, in.url
	e.waitFor("the failed takeover", func() bool { return st.campaigns.Load() >= 2 })
	if in.srv.Leading() {
		t.Fatal("an instance whose takeover failed still answers as the leader")
	}
	if code, out := e.do("GET", "/agent/v1/state", "some-token", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("state with no leader: %d %v, want 503 (retry), not a refused token", code, out)
	}
	close(st.release)
	e.waitFor("it leads at its next term", in.srv.Leading)
	tok := e.login("a", "agent")
	e.mustDo("GET", "/agent/v1/state", tok, nil)
}
