package chatcore

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
	dto "github.com/prometheus/client_model/go"
)

// testCore is a core serving on loopback with a client connected to it.
type testCore struct {
	c     *Core
	cl    chatpb.ChatClient
	conn  *grpc.ClientConn
	store *memStore
	http  string
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Name = "test-core"
	cfg.GRPC, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.ServiceToken = "svc-token"
	cfg.AdminToken = "adm-token"
	cfg.TranscriptResendDelay = 10 * time.Millisecond
	return cfg
}

func startCore(t testing.TB, mod func(*Config), opts ...Option) *testCore {
	t.Helper()
	store := newMemStore()
	tc := startCoreWith(t, store, mod, opts...)
	tc.store = store
	return tc
}

// startCoreWith serves a core over store on loopback and waits until it is
// primary; it stops when the test ends.
func startCoreWith(t testing.TB, store TranscriptStore, mod func(*Config), opts ...Option) *testCore {
	t.Helper()
	cfg := testConfig()
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, store, telemetry.Discard(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, gl, hl) }()
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitFor(t, "primary", func() bool { return c.role.IsPrimary() })
	return &testCore{c: c, cl: chatpb.NewChatClient(conn), conn: conn, http: hl.Addr().String()}
}

// waitFor polls cond until it holds or a 10 s deadline passes (generous:
// the suite runs with -race beside other packages on two cores).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// relisten listens on addr again once a killed core has let go of it.
func relisten(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	waitFor(t, "port "+addr+" free", func() bool {
		l, err := net.Listen("tcp", addr)
		ln = l
		return err == nil
	})
	return ln
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// chat starts a session and joins an agent.
func (tc *testCore) chat(t testing.TB) (cust, agent *chatpb.Auth) {
	t.Helper()
	ctx := ctxT(t)
	r, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "support", Nickname: "Ann", Subject: "help", UserData: map[string]string{"order": "42"}})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	j, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: r.Auth.SessionId, Nickname: "Bob", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc-token"})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return r.Auth, j.Auth
}

func (tc *testCore) events(t testing.TB, a *chatpb.Auth) []*chatpb.Event {
	t.Helper()
	r, err := tc.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: a, FromIndex: 1})
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	return r.Events
}

func (tc *testCore) logLen(id string) int {
	s := tc.c.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.log.LastIndex())
}

func msg(a *chatpb.Auth, text, cmid string) *chatpb.SendRequest {
	return &chatpb.SendRequest{Auth: a, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text, ClientMessageId: cmid}
}

func kinds(evs []*chatpb.Event) []chatpb.EventKind {
	var out []chatpb.EventKind
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

func TestChatBothWaysWithSubscribe(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)

	sub, err := tc.cl.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: cust, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range []struct {
		a    *chatpb.Auth
		text string
	}{{cust, "hello"}, {agent, "hi, how can I help?"}, {cust, "my order"}} {
		r, err := tc.cl.Send(ctx, msg(s.a, s.text, ""))
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if r.Index != uint64(4+i) || r.Duplicate {
			t.Fatalf("send %d: index %d dup %v, want %d", i, r.Index, r.Duplicate, 4+i)
		}
	}
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: agent, EndSession: true}); err != nil {
		t.Fatal(err)
	}
	var got []*chatpb.Event
	for {
		ev, err := sub.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		got = append(got, ev)
	}
	want := []chatpb.EventKind{chatpb.EventKind_EVENT_KIND_SESSION_STARTED, chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED,
		chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, chatpb.EventKind_EVENT_KIND_MESSAGE, chatpb.EventKind_EVENT_KIND_MESSAGE,
		chatpb.EventKind_EVENT_KIND_MESSAGE, chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, chatpb.EventKind_EVENT_KIND_SESSION_ENDED}
	if g := kinds(got); len(g) != len(want) {
		t.Fatalf("kinds %v, want %v", g, want)
	}
	for i, ev := range got {
		if ev.Kind != want[i] || ev.Index != uint64(i+1) {
			t.Errorf("event %d: %v index %d", i, ev.Kind, ev.Index)
		}
		if ev.KeyHash != "" {
			t.Errorf("event %d carries a key hash to a client", ev.Index)
		}
		if ev.SessionId != cust.SessionId || ev.Epoch != 1 {
			t.Errorf("event %d: session %q epoch %d", ev.Index, ev.SessionId, ev.Epoch)
		}
	}
	if got[len(got)-1].Attrs["reason"] != "closed" {
		t.Errorf("end reason %q", got[len(got)-1].Attrs["reason"])
	}
	// The internal log keeps the key hash (it is replicated and saved).
	s := tc.c.session(cust.SessionId)
	s.mu.Lock()
	if s.log.Entries()[1].Ev.KeyHash != hashKey(cust.SecureKey) {
		t.Error("log lost the customer's key hash")
	}
	s.mu.Unlock()
	// Sending after the end fails with FailedPrecondition.
	if _, err := tc.cl.Send(ctx, msg(cust, "late", "")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("send after end: %v", err)
	}
}

func TestVisibilityOverGRPC(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	join := func(v chatpb.Visibility) *chatpb.Auth {
		j, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: cust.SessionId, Nickname: "Sue", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR, Visibility: v, ServiceToken: "svc-token"})
		if err != nil {
			t.Fatal(err)
		}
		return j.Auth
	}
	mon := join(chatpb.Visibility_VISIBILITY_MONITOR)
	coach := join(chatpb.Visibility_VISIBILITY_INTERNAL)
	mustSend := func(r *chatpb.SendRequest) {
		if _, err := tc.cl.Send(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	mustSend(msg(coach, "offer a refund", "")) // coach: internal by its join
	mustSend(msg(mon, "watching", ""))         // monitor: monitor by its join
	mustSend(&chatpb.SendRequest{Auth: agent, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "note", Visibility: chatpb.Visibility_VISIBILITY_INTERNAL})
	mustSend(msg(agent, "we will refund you", ""))
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: mon}); err != nil {
		t.Fatal(err)
	}
	custView := tc.events(t, cust)
	for _, ev := range custView {
		if ev.Visibility != chatpb.Visibility_VISIBILITY_ALL {
			t.Errorf("customer received %v with visibility %v", ev.Kind, ev.Visibility)
		}
		if ev.From.GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR {
			t.Errorf("customer saw supervisor event %v", ev.Kind)
		}
	}
	if n := len(custView); n != 4 { // started, 2 joins, the agent's public message
		t.Errorf("customer sees %d events (%v), want 4", n, kinds(custView))
	}
	agentView := tc.events(t, agent)
	if len(agentView) != tc.logLen(cust.SessionId) {
		t.Errorf("agent sees %d of %d events", len(agentView), tc.logLen(cust.SessionId))
	}
}

// metric returns the value of a counter or gauge in the core's registry
// whose labels include the given name=value pairs; it fails the test when no
// sample matches (a renamed metric must not read as 0).
func (tc *testCore) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := tc.c.tel.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			found = true
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	if !found {
		// A renamed metric must not read as 0 and pass a negative check.
		t.Fatalf("no sample of %s%v on %s", name, labels, tc.c.cfg.Name)
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestHealthAndHTTP(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	h := healthpb.NewHealthClient(tc.conn)
	for _, svc := range []string{"", ChatServiceName} {
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, r, err)
		}
	}
	tc.c.stepDown("test", 7)
	r, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: ChatServiceName})
	if err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after step-down: %v %v", r, err)
	}
	if _, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "s", Nickname: "n"}); status.Code(err) != codes.Unavailable {
		t.Errorf("start on a backup: %v", err)
	}
	st, err := tc.cl.Status(ctx, &chatpb.StatusRequest{})
	if err != nil || st.Role != RoleBackup || st.Epoch != 7 || st.Name != "test-core" {
		t.Errorf("status: %v %v", st, err)
	}
	for path, want := range map[string]string{"/healthz": "ok test-core backup", "/status": `"role":"backup"`, "/metrics": "hachat_core_role"} {
		resp, err := http.Get("http://" + tc.http + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d %q, want %q", path, resp.StatusCode, b, want)
		}
	}
}

// fakeClock is a settable clock for WithClock.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
