package chatcore

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
	"github.com/hachat/hachat/ucsmock"
)

// TestWrongKeyDoesNotRestoreFromUCS: a session only UCS holds is rebuilt
// for a request whose participant and key match the stored join, and a
// request with a wrong key (or unknown participant) changes nothing: no
// session in the core, no failover notices, no restoration metric.
func TestWrongKeyDoesNotRestoreFromUCS(t *testing.T) {
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
	stored := store.indexes(cust.SessionId)

	second := startNode(t, "core-b", RolePrimary, "", listen(t), store, nil)
	waitFor(t, "second primary", func() bool { return second.c.role.IsPrimary() })
	tc := &testCore{c: second.c, cl: second.cl}
	for _, bad := range []*chatpb.Auth{
		{SessionId: cust.SessionId, ParticipantId: cust.ParticipantId, SecureKey: "not-the-key"},
		{SessionId: cust.SessionId, ParticipantId: "p9", SecureKey: cust.SecureKey},
		{SessionId: cust.SessionId, ParticipantId: agent.ParticipantId, SecureKey: cust.SecureKey},
	} {
		if _, err := second.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: bad, FromIndex: 1}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("events with %v: %v, want PermissionDenied", bad, err)
		}
		if _, err := second.cl.Send(ctxT(t), msg(bad, "x", "")); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("send with %v: %v, want PermissionDenied", bad, err)
		}
	}
	if second.c.session(cust.SessionId) != nil {
		t.Fatal("a wrong-key request restored the session into the core")
	}
	st, err := second.cl.Status(ctxT(t), &chatpb.StatusRequest{})
	if err != nil || st.LiveSessions != 0 {
		t.Fatalf("status after wrong keys: %v %v", st, err)
	}
	if n := tc.metric(t, "hachat_core_restored_sessions_total", "source", "ucs"); n != 0 {
		t.Fatalf("restored_sessions_total{source=ucs} = %v after wrong keys", n)
	}
	if got := store.indexes(cust.SessionId); !slices.Equal(got, stored) {
		t.Fatalf("UCS transcript changed by wrong keys: %v, was %v", got, stored)
	}

	// The right key rebuilds it (with the failover notices).
	evs, err := second.cl.Events(ctxT(t), &chatpb.EventsRequest{Auth: agent, FromIndex: 1})
	if err != nil {
		t.Fatalf("events with the right key: %v", err)
	}
	if !slices.Contains(kinds(evs.Events), chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED) {
		t.Fatalf("restored kinds %v", kinds(evs.Events))
	}
	if st, _ := second.cl.Status(ctxT(t), &chatpb.StatusRequest{}); st.GetLiveSessions() != 1 {
		t.Fatalf("live sessions after the right key: %v", st)
	}
}

// blockingMembers is a Membership double whose SetMeta blocks until its
// context ends, counting the calls still inside.
type blockingMembers struct {
	memMembers
	inside atomic.Int32
	calls  atomic.Int32
}

func (m *blockingMembers) SetMeta(ctx context.Context, meta membership.Meta) error {
	m.inside.Add(1)
	defer m.inside.Add(-1)
	m.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

// TestServeWaitsForBackgroundWork: work a role change starts (gossiping
// meta, restoring after a switchover) runs under Serve's context and
// Serve returns only after it finished.
func TestServeWaitsForBackgroundWork(t *testing.T) {
	mm := &blockingMembers{}
	n := startNode(t, "core-a", RolePrimary, "", listen(t), newMemStore(), nil, WithMembership(mm))
	waitFor(t, "primary", func() bool { return n.c.role.IsPrimary() })
	waitFor(t, "meta publish in flight", func() bool { return mm.inside.Load() > 0 })
	n.stop()
	if in := mm.inside.Load(); in != 0 {
		t.Fatalf("Serve returned with %d meta publishes still running", in)
	}
	if n.c.bg.spawn(func(context.Context) { t.Error("ran after Serve returned") }) {
		t.Fatal("spawn accepted work after Serve returned")
	}
}

// forgedHello opens a Replicate stream to addr with hello and returns the
// status code the primary ends it with.
func forgedHello(t *testing.T, addr string, hello *chatpb.ReplicaHello) codes.Code {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := chatpb.NewReplicationClient(conn).Replicate(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&chatpb.ReplicaAck{Hello: hello}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return status.Code(err)
		}
	}
}

// TestReplicateRejectsBadToken: with a pair token (admin-token) set, a
// Replicate stream without it, or with a wrong one, is refused
// PermissionDenied and changes nothing, even when it claims a newer epoch:
// the primary stays primary and keeps its real backup.
func TestReplicateRejectsBadToken(t *testing.T) {
	a, _ := pair(t, newMemStore(), nil)
	link := a.c.repl.Current()
	for _, tok := range []string{"", "wrong", "adm-token "} {
		if code := forgedHello(t, a.addr, &chatpb.ReplicaHello{Name: "mallory", Epoch: 99, Token: tok}); code != codes.PermissionDenied {
			t.Fatalf("token %q: %v, want PermissionDenied", tok, code)
		}
	}
	if !a.c.role.IsPrimary() || a.c.Epoch() != 1 {
		t.Fatalf("a is %s at epoch %d after forged hellos", a.c.Role(), a.c.Epoch())
	}
	if cur := a.c.repl.Current(); cur != link || !cur.InSync() {
		t.Fatal("a forged hello replaced the real backup's link")
	}
	cust, _ := a.chat(t)
	if _, err := a.cl.Send(ctxT(t), msg(cust, "still serving", "")); err != nil {
		t.Fatal(err)
	}
}

// TestReplicateUnconfirmedEpoch: a backup (with the right token) claiming a
// newer epoch makes the primary step down only when UCS holds a newer
// epoch; a claim UCS refutes, or cannot confirm, is refused and changes nothing.
func TestReplicateUnconfirmedEpoch(t *testing.T) {
	store := &cutStore{memStore: newMemStore()}
	a, _ := pair(t, store, nil)
	link := a.c.repl.Current()
	if code := forgedHello(t, a.addr, &chatpb.ReplicaHello{Name: "liar", Epoch: 99, Token: "adm-token"}); code != codes.FailedPrecondition {
		t.Fatalf("refuted epoch: %v, want FailedPrecondition", code)
	}
	store.setDown(true)
	if code := forgedHello(t, a.addr, &chatpb.ReplicaHello{Name: "liar", Epoch: 99, Token: "adm-token"}); code != codes.Unavailable {
		t.Fatalf("unconfirmable epoch: %v, want Unavailable", code)
	}
	store.setDown(false)
	if !a.c.role.IsPrimary() || a.c.Epoch() != 1 || a.c.repl.Current() != link {
		t.Fatalf("a is %s at epoch %d (same link %v) after unconfirmed claims", a.c.Role(), a.c.Epoch(), a.c.repl.Current() == link)
	}
	if _, err := store.memStore.ClaimEpoch(ctxT(t), "hachat", 1, 5, "core-x"); err != nil {
		t.Fatal(err)
	}
	if code := forgedHello(t, a.addr, &chatpb.ReplicaHello{Name: "core-x", Epoch: 5, Token: "adm-token"}); code != codes.FailedPrecondition {
		t.Fatalf("confirmed epoch: %v, want FailedPrecondition", code)
	}
	if a.c.role.IsPrimary() || a.c.Epoch() != 5 {
		t.Fatalf("a is %s at epoch %d after a confirmed newer epoch", a.c.Role(), a.c.Epoch())
	}
}

// countingStore counts epoch reads.
type countingStore struct {
	*memStore
	epochReads atomic.Int32
}

func (s *countingStore) Epoch(ctx context.Context, service string) (Epoch, error) {
	s.epochReads.Add(1)
	return s.memStore.Epoch(ctx, service)
}

// TestGossipedNewerEpochNeedsUCS: a member gossiping primary at a newer
// epoch UCS does not know does not make the primary step down; once UCS
// holds the newer epoch, it does.
func TestGossipedNewerEpochNeedsUCS(t *testing.T) {
	mm := &memMembers{}
	store := &countingStore{memStore: newMemStore()}
	a := startNode(t, "core-a", RolePrimary, "", listen(t), store, nil, WithMembership(mm))
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	reads := store.epochReads.Load()
	mm.publish(membership.Event{Type: membership.EventUpdated, Member: membership.Member{Name: "core-b", State: membership.StateAlive,
		Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: 5}}})
	waitFor(t, "the claim checked at UCS", func() bool { return store.epochReads.Load() > reads })
	if !a.c.role.IsPrimary() || a.c.Epoch() != 1 {
		t.Fatalf("a is %s at epoch %d after an unconfirmed gossiped epoch", a.c.Role(), a.c.Epoch())
	}
	if _, err := store.memStore.ClaimEpoch(ctxT(t), "hachat", 1, 5, "core-b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a stepped down", func() bool { return a.c.Role() == RoleBackup })
	if a.c.Epoch() != 5 {
		t.Fatalf("a knows epoch %d, want 5", a.c.Epoch())
	}
}

// TestCoreSendsWriterToken: against a ucsmock that requires a writer token,
// a core whose client carries it claims the epoch and saves; one without it
// never becomes primary (its claims get 401).
func TestCoreSendsWriterToken(t *testing.T) {
	ucfg := ucsmock.DefaultConfig()
	ucfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	ucfg.WriterToken = "w-tok"
	srv, err := ucsmock.New(ucfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })

	bare := ucsmock.NewClient(hs.URL, hs.Client(), nil)
	without := startNode(t, "core-x", RolePrimary, "", listen(t), bare, nil)
	waitFor(t, "claims refused", func() bool { return srv.Stats().Unauthorized >= 2 })
	if without.c.role.IsPrimary() {
		t.Fatal("a core without the writer token became primary")
	}
	without.stop()

	with := startNode(t, "core-a", RolePrimary, "", listen(t), bare.WithToken("w-tok"), func(c *Config) { c.TranscriptAutoSave = 1 })
	waitFor(t, "primary with the token", func() bool { return with.c.role.IsPrimary() })
	cust, _ := with.chat(t)
	if _, err := with.cl.Send(ctxT(t), msg(cust, "saved with the token", "")); err != nil {
		t.Fatal(err)
	}
	reader := bare.WithToken("w-tok") // reads need a token too; the writer's serves
	waitFor(t, "transcript saved", func() bool {
		tr, err := reader.Transcript(ctxT(t), cust.SessionId)
		return err == nil && len(tr.Events) >= 3
	})
}

// TestWarnsOpenTokensWhenPaired: a paired core (peer or gossip) with an
// empty service-token (or admin-token) says so at start with a WARN; a
// standalone core or one with the tokens set does not.
func TestWarnsOpenTokensWhenPaired(t *testing.T) {
	for _, tc := range []struct {
		name           string
		peer           bool
		svc, adm       string
		wantSvc, wantA bool
	}{
		{"paired, no tokens", true, "", "", true, true},
		{"paired, service token only", true, "s", "", false, true},
		{"paired, both tokens", true, "s", "a", false, false},
		{"standalone, no tokens", false, "", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf telemetrytest.LogBuffer
			tel := *telemetry.Discard()
			tel.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
			peer := ""
			if tc.peer {
				peer = "127.0.0.1:1" // nobody: the core stays a backup
			}
			cfg := testConfig()
			cfg.Role, cfg.Peer, cfg.ServiceToken, cfg.AdminToken = RoleBackup, peer, tc.svc, tc.adm
			c, err := New(cfg, newMemStore(), &tel)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Serve(ctx, listen(t), listen(t)) }()
			cancel() // Serve logs the warnings before it looks at ctx
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			logs := buf.String()
			if got := strings.Contains(logs, "empty service-token"); got != tc.wantSvc {
				t.Errorf("service-token warning %v, want %v; logs:\n%s", got, tc.wantSvc, logs)
			}
			if got := strings.Contains(logs, "empty admin-token"); got != tc.wantA {
				t.Errorf("admin-token warning %v, want %v; logs:\n%s", got, tc.wantA, logs)
			}
		})
	}
}
