package chatcore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
)

// node is one core of a test pair, serving on loopback.
type node struct {
	c      *Core
	cl     chatpb.ChatClient
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// listen reserves a loopback listener.
func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// startNode serves a core on gl with peer as its Peer.
func startNode(t testing.TB, name, role, peer string, gl net.Listener, store TranscriptStore, mod func(*Config), opts ...Option) *node {
	t.Helper()
	cfg := testConfig()
	cfg.Name, cfg.Role, cfg.Peer = name, role, peer
	cfg.ReplicationTimeout = 300 * time.Millisecond
	cfg.ProbeTimeout = 50 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, store, telemetry.Discard(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{c: c, addr: gl.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	hl := listen(t) // here, not in the goroutine: listen may call t.Fatal
	go func() { n.done <- c.Serve(ctx, gl, hl) }()
	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	n.cl = chatpb.NewChatClient(conn)
	t.Cleanup(func() { conn.Close(); n.stop() })
	return n
}

// kill ends the node's Serve like a crash: no shutdown handover; its
// listeners close and its streams break.
func (n *node) kill() {
	n.c.abrupt.Store(true)
	n.stop()
}

// stop ends the node's Serve cleanly (a primary hands over to an in-sync backup).
func (n *node) stop() {
	if n.cancel != nil {
		n.cancel()
		<-n.done
		n.cancel = nil
	}
}

// pair starts a primary and a backup replicating from it.
func pair(t testing.TB, store TranscriptStore, mod func(*Config)) (a, b *node) {
	t.Helper()
	la, lb := listen(t), listen(t)
	a = startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, mod)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	b = startNode(t, "core-b", RoleBackup, la.Addr().String(), lb, store, mod)
	waitInSync(t, a, "core-b")
	return a, b
}

func waitInSync(t testing.TB, primary *node, backup string) {
	t.Helper()
	waitFor(t, backup+" in sync", func() bool {
		l := primary.c.repl.Current()
		return l != nil && l.Name() == backup && l.InSync()
	})
}

func (n *node) chat(t testing.TB) (cust, agent *chatpb.Auth) {
	return (&testCore{c: n.c, cl: n.cl}).chat(t)
}

func (n *node) log(id string) []*chatpb.Event {
	s := n.c.session(id)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*chatpb.Event, s.log.LastIndex())
	for i, e := range s.log.Entries() {
		out[i] = e.Ev
	}
	return out
}

func sameLog(a, b []*chatpb.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Index != b[i].Index || a[i].Kind != b[i].Kind || a[i].Text != b[i].Text {
			return false
		}
	}
	return true
}

func TestReplicationAndFailover(t *testing.T) {
	store := newMemStore()
	a, b := pair(t, store, func(c *Config) { c.TranscriptAutoSave = 1 })
	ctx := ctxT(t)
	cust, agent := a.chat(t)
	var acked []uint64
	for i := range 5 {
		r, err := a.cl.Send(ctx, msg(cust, fmt.Sprint("m", i), fmt.Sprint("c", i)))
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, r.Index)
	}
	// Synchronous replication: every acknowledged event is already on the backup.
	if !sameLog(a.log(cust.SessionId), b.log(cust.SessionId)) {
		t.Fatalf("backup log differs:\n%v\n%v", a.log(cust.SessionId), b.log(cust.SessionId))
	}
	if st, _ := a.cl.Status(ctx, &chatpb.StatusRequest{}); st.Backup != "core-b" || st.Role != RolePrimary {
		t.Errorf("status of a: %v", st)
	}
	if _, err := b.cl.Send(ctx, msg(cust, "to backup", "")); status.Code(err) != codes.Unavailable {
		t.Errorf("backup served a send: %v", err)
	}

	// Transcript progress is replicated state: the backup learns what UCS holds.
	savedThrough := func(n *node) uint64 {
		s := n.c.session(cust.SessionId)
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.save.SavedThrough
	}
	waitFor(t, "save progress replicated", func() bool {
		return savedThrough(a) == acked[len(acked)-1] && savedThrough(b) == savedThrough(a)
	})

	sub, err := a.cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: agent, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Recv(); err != nil {
		t.Fatal(err)
	}
	a.kill() // the primary dies: its listener and streams close
	if _, err := sub.Recv(); err == nil || err == io.EOF {
		// drain what was buffered; the stream must end with an error
		for err == nil {
			_, err = sub.Recv()
		}
	}
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	if b.c.Epoch() != 2 {
		t.Errorf("b epoch %d, want 2", b.c.Epoch())
	}
	// The chat goes on at b: the same keys work, a resend is recognised, and
	// both sides see the disconnected / reconnected notices.
	r, err := b.cl.Send(ctx, msg(cust, "m2", "c2"))
	if err != nil || !r.Duplicate || r.Index != acked[2] {
		t.Fatalf("resend at b: %v %v", r, err)
	}
	if _, err := b.cl.Send(ctx, msg(agent, "after failover", "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restoration notices", func() bool {
		k := kinds(b.log(cust.SessionId))
		return slices.Contains(k, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED)
	})
	for _, who := range []*chatpb.Auth{cust, agent} {
		evs, err := b.cl.Events(ctx, &chatpb.EventsRequest{Auth: who, FromIndex: 1})
		if err != nil {
			t.Fatal(err)
		}
		k := kinds(evs.Events)
		if !slices.Contains(k, chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED) || !slices.Contains(k, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED) {
			t.Errorf("%s misses failover notices: %v", who.ParticipantId, k)
		}
		for i, ev := range evs.Events {
			if ev.Index != uint64(i+1) {
				t.Fatalf("gap: event %d has index %d", i, ev.Index)
			}
		}
		seen := map[uint64]int{}
		for _, ev := range evs.Events {
			seen[ev.Index]++
		}
		for _, idx := range acked {
			if seen[idx] != 1 {
				t.Errorf("acknowledged index %d seen %d times", idx, seen[idx])
			}
		}
	}
	if got := (&testCore{c: b.c}).metric(t, "hachat_core_failovers_total"); got != 1 {
		t.Errorf("failovers %v", got)
	}
}

func TestSwitchover(t *testing.T) {
	store := newMemStore()
	a, b := pair(t, store, nil)
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	if _, err := a.cl.Send(ctx, msg(cust, "before", "c1")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "wrong"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bad token: %v", err)
	}
	r, err := a.cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "adm-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("switchover pause %d µs", r.PauseMicros)
	if r.NewPrimary != "core-b" || r.NewEpoch != 2 || a.c.Role() != RoleBackup || !b.c.role.IsPrimary() {
		t.Fatalf("switchover: %v a=%s", r, a.c.Role())
	}
	if _, err := b.cl.Send(ctx, msg(cust, "after", "c2")); err != nil {
		t.Fatal(err)
	}
	// A planned switchover's notices say so: no "failover" wording.
	notices := 0
	for _, ev := range b.log(cust.SessionId) {
		switch ev.Kind {
		case chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:
			notices++
			if got := ev.Attrs["reason"]; got != "switchover" {
				t.Errorf("%v after a switchover has reason %q, want switchover", ev.Kind, got)
			}
		}
	}
	if notices == 0 {
		t.Error("no disconnected/reconnected notice after the switchover")
	}
	// The old primary now replicates from the new one.
	waitInSync(t, b, "core-a")
	waitFor(t, "a caught up", func() bool { return sameLog(a.log(cust.SessionId), b.log(cust.SessionId)) })
	// And the role can go back.
	r, err = b.cl.Switchover(ctx, &chatpb.SwitchoverRequest{AdminToken: "adm-token"})
	if err != nil || r.NewPrimary != "core-a" || r.NewEpoch != 3 {
		t.Fatalf("switch back: %v %v", r, err)
	}
}

func TestRestorationNone(t *testing.T) {
	store := newMemStore()
	a, b := pair(t, store, func(c *Config) { c.SessionRestorationMode = RestorationNone })
	cust, _ := a.chat(t)
	a.kill()
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	waitFor(t, "session ended", func() bool {
		l := b.log(cust.SessionId)
		return len(l) > 0 && l[len(l)-1].Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED
	})
	l := b.log(cust.SessionId)
	if l[len(l)-1].Attrs["reason"] != "failover" {
		t.Fatalf("end reason %q", l[len(l)-1].Attrs["reason"])
	}
	if _, err := b.cl.Send(ctxT(t), msg(cust, "x", "")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("send after failover end: %v", err)
	}
}

func TestBackupAwaySecondCopyInUCS(t *testing.T) {
	store := newMemStore()
	lb := listen(t)
	peer := lb.Addr().String()
	lb.Close() // no backup runs there
	a := startNode(t, "core-a", RolePrimary, peer, listen(t), store, nil)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	r, err := a.cl.Send(ctx, msg(cust, "hello", ""))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(store.indexes(cust.SessionId), r.Index) {
		t.Fatal("acknowledged without a second copy in UCS") // auto-save is 0: only the second copy saves it
	}
	store.set(func(m *memStore) { m.saveErr = fmt.Errorf("down: %w", ErrUnavailable) })
	n := len(a.log(cust.SessionId))
	if _, err := a.cl.Send(ctx, msg(cust, "no copy possible", "")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send with neither backup nor UCS: %v", err)
	}
	if len(a.log(cust.SessionId)) != n {
		t.Fatal("a send without a second copy was committed")
	}
}

func TestRestoreFromUCS(t *testing.T) {
	store := newMemStore()
	first := startNode(t, "core-a", RolePrimary, "", listen(t), store, func(c *Config) { c.TranscriptAutoSave = 1 })
	waitFor(t, "primary", func() bool { return first.c.role.IsPrimary() })
	cust, agent := first.chat(t)
	r, err := first.cl.Send(ctxT(t), msg(cust, "saved", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "saved", func() bool { return slices.Contains(store.indexes(cust.SessionId), r.Index) })
	first.stop()
	second := startNode(t, "core-b", RolePrimary, "", listen(t), store, nil)
	waitFor(t, "second primary", func() bool { return second.c.role.IsPrimary() })
	evs, err := second.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: agent, FromIndex: 1})
	if err != nil {
		t.Fatalf("events of a session only in UCS: %v", err)
	}
	k := kinds(evs.Events)
	if !slices.Contains(k, chatpb.EventKind_EVENT_KIND_MESSAGE) || !slices.Contains(k, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED) {
		t.Fatalf("restored kinds %v", k)
	}
	d, err := second.cl.Send(ctxT(t), msg(cust, "saved", "c1"))
	if err != nil || !d.Duplicate || d.Index != r.Index {
		t.Fatalf("resend after UCS restore: %v %v", d, err)
	}
	if _, err := second.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: &chatpb.Auth{SessionId: "nope", ParticipantId: "p1", SecureKey: "k"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown session: %v", err)
	}
}

func TestRestartedPrimaryJoinsAsBackup(t *testing.T) {
	store := newMemStore()
	la, lb := listen(t), listen(t)
	aAddr := la.Addr().String()
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	b := startNode(t, "core-b", RoleBackup, aAddr, lb, store, nil)
	waitInSync(t, a, "core-b")
	cust, _ := a.chat(t)
	a.kill()
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	la2 := relisten(t, aAddr)
	a2 := startNode(t, "core-a", RolePrimary, b.addr, la2, store, nil)
	waitInSync(t, b, "core-a")
	if a2.c.Role() != RoleBackup || b.c.Role() != RolePrimary {
		t.Fatalf("roles a=%s b=%s", a2.c.Role(), b.c.Role())
	}
	if !sameLog(a2.log(cust.SessionId), b.log(cust.SessionId)) {
		t.Fatal("restarted core did not resync the session")
	}
}

func TestUCSDownDuringFailover(t *testing.T) {
	store := &cutStore{memStore: newMemStore()}
	a, b := pair(t, store, nil)
	cust, _ := a.chat(t)
	r, err := a.cl.Send(ctxT(t), msg(cust, "acked before the fault", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	store.setDown(true)
	a.kill()
	time.Sleep(300 * time.Millisecond) // b detects at once but must not promote without an epoch
	if b.c.role.IsPrimary() {
		t.Fatal("b promoted without a fencing epoch")
	}
	if _, err := b.cl.Send(ctxT(t), msg(cust, "x", "")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send during the pause: %v", err)
	}
	store.setDown(false)
	// Serving, not only primary: when the probe of the killed primary is
	// not a clean refusal (a loaded machine), the promotion merges from UCS
	// first and answers UNAVAILABLE meanwhile, as clients retry.
	waitFor(t, "b promoted and serving once UCS is back", func() bool { return b.c.role.IsPrimary() && !b.c.role.Unmerged() })
	d, err := b.cl.Send(ctxT(t), msg(cust, "acked before the fault", "c1"))
	if err != nil || !d.Duplicate || d.Index != r.Index {
		t.Fatalf("acknowledged message lost: %v %v", d, err)
	}
}

// memMembers is an in-memory Membership double.
type memMembers struct {
	mu      sync.Mutex
	members []membership.Member
	metas   []membership.Meta
	subs    []chan membership.Event
}

func (m *memMembers) Members() []membership.Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.members)
}

func (m *memMembers) SetMeta(ctx context.Context, meta membership.Meta) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.metas = append(m.metas, meta)
	return nil
}

func (m *memMembers) Subscribe() (<-chan membership.Event, func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch := make(chan membership.Event, 16)
	m.subs = append(m.subs, ch)
	return ch, func() {}
}

func (m *memMembers) publish(ev membership.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.members = append(m.members, ev.Member)
	for _, s := range m.subs {
		s <- ev
	}
}

func (m *memMembers) lastMeta() membership.Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.metas) == 0 {
		return membership.Meta{}
	}
	return m.metas[len(m.metas)-1]
}

func TestNewerPrimaryInMembershipFencesOld(t *testing.T) {
	mm := &memMembers{}
	store := newMemStore()
	a := startNode(t, "core-a", RolePrimary, "", listen(t), store, nil, WithMembership(mm))
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	waitFor(t, "meta published", func() bool { m := mm.lastMeta(); return m.Role == RolePrimary && m.Epoch == 1 })
	if _, err := store.ClaimEpoch(ctxT(t), "hachat", 1, 5, "core-b"); err != nil { // core-b won the CAS at UCS
		t.Fatal(err)
	}
	mm.publish(membership.Event{Type: membership.EventUpdated, Member: membership.Member{Name: "core-b", State: membership.StateAlive,
		Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 5}}})
	waitFor(t, "a stepped down", func() bool { return a.c.Role() == RoleBackup })
	if a.c.Epoch() != 5 {
		t.Errorf("a knows epoch %d, want 5", a.c.Epoch())
	}
	waitFor(t, "backup meta published", func() bool { return mm.lastMeta().Role == RoleBackup })
	st, err := a.cl.Status(ctxT(t), &chatpb.StatusRequest{})
	if err != nil || len(st.Members) != 1 || st.Members[0].Name != "core-b" {
		t.Fatalf("status members: %v %v", st, err)
	}
}

func TestWithPlaceholders(t *testing.T) {
	stored := []*chatpb.Event{{Index: 1}, {Index: 2}, {Index: 5}, {Index: 3}}
	out := withPlaceholders("s", stored, 1)
	var idx []uint64
	for _, e := range out {
		idx = append(idx, e.Index)
	}
	if !slices.Equal(idx, []uint64{2, 3, 4, 5}) || out[2].Attrs["noticeType"] != "omitted" || out[2].Visibility != chatpb.Visibility_VISIBILITY_MONITOR {
		t.Fatalf("placeholders: %v", out)
	}
}

// TestCleanStopHandsOver: stopping the primary cleanly (SIGTERM) is a planned
// switchover to the in-sync backup, not a failover.
func TestCleanStopHandsOver(t *testing.T) {
	a, b := pair(t, newMemStore(), nil)
	cust, _ := a.chat(t)
	r, err := a.cl.Send(ctxT(t), msg(cust, "before", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a.stop()
	if !b.c.role.IsPrimary() || b.c.Epoch() != 2 {
		t.Fatalf("after a clean stop b is %s at epoch %d", b.c.Role(), b.c.Epoch())
	}
	t.Logf("clean stop handed over in %v", time.Since(start))
	if b.c.detect.SawPrimary() && b.c.replicaStale.Load() {
		t.Error("a handover marked the replica stale")
	}
	d, err := b.cl.Send(ctxT(t), msg(cust, "before", "c1"))
	if err != nil || !d.Duplicate || d.Index != r.Index {
		t.Fatalf("resend after handover: %v %v", d, err)
	}
}

// TestQuickRestartOfPrimary: the primary crashes and its restarted process
// (old flags: role primary) is listening again before the backup has
// decided. The restarted core must join as backup (the backup holds the
// sessions) and the backup must see that its primary is gone: it answers as
// backup, so the backup promotes instead of waiting forever.
func TestQuickRestartOfPrimary(t *testing.T) {
	store := newMemStore()
	a, b := pair(t, store, nil)
	cust, _ := a.chat(t)
	r, err := a.cl.Send(ctxT(t), msg(cust, "before", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	addr := a.addr
	a.kill()
	ln := relisten(t, addr)
	a2 := startNode(t, "core-a", RolePrimary, b.addr, ln, store, nil)
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	waitInSync(t, b, "core-a")
	if a2.c.Role() != RoleBackup {
		t.Fatalf("restarted core is %s", a2.c.Role())
	}
	d, err := b.cl.Send(ctxT(t), msg(cust, "before", "c1"))
	if err != nil || !d.Duplicate || d.Index != r.Index {
		t.Fatalf("resend: %v %v", d, err)
	}
}

// TestMetaAnnouncesAdvertisedAddresses: a core bound to one address that
// others cannot dial (0.0.0.0 in a pod) announces --grpc-advertise and
// --http-advertise in its gossip meta, which the control plane publishes
// as the sidecars' endpoint; without them it announces what it bound.
func TestMetaAnnouncesAdvertisedAddresses(t *testing.T) {
	tests := []struct {
		name             string
		grpcAdv, httpAdv string
	}{
		{"advertised", "10.1.2.3:7101", "10.1.2.3:7102"},
		{"bound", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mm := &memMembers{}
			a := startCore(t, func(c *Config) { c.GRPCAdvertise, c.HTTPAdvertise = tc.grpcAdv, tc.httpAdv }, WithMembership(mm))
			want := membership.Meta{GRPCAddr: tc.grpcAdv, HTTPAddr: tc.httpAdv}
			if want.GRPCAddr == "" {
				want.GRPCAddr, want.HTTPAddr = a.conn.Target(), a.http
			}
			waitFor(t, "meta published", func() bool {
				m := mm.lastMeta()
				return m.Role == RolePrimary && m.GRPCAddr == want.GRPCAddr && m.HTTPAddr == want.HTTPAddr
			})
		})
	}
}

func TestAdvertiseValidation(t *testing.T) {
	tests := []struct {
		name, grpcAdv, httpAdv, want string
	}{
		{"ok", "10.0.0.7:7101", "10.0.0.7:7102", ""},
		{"host name", "core-a-0.core-a:7101", "", "grpc-advertise"},
		{"unspecified", "0.0.0.0:7101", "", "grpc-advertise"},
		{"no port", "", "10.0.0.7", "http-advertise"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.GRPCAdvertise, cfg.HTTPAdvertise = tc.grpcAdv, tc.httpAdv
			err := cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, membership.ErrBadAdvertise)):
				t.Fatalf("Validate = %v, want ErrBadAdvertise naming %s", err, tc.want)
			}
		})
	}
}
