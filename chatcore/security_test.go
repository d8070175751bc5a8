package chatcore

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
)

// TestWrongKeyDoesNotRestoreFromUCS: a session only UCS holds is rebuilt
// for a request whose participant and key match the stored join, and a
// request with a wrong key (or unknown participant) changes nothing: no
// session in the core, no failover notices, no restoration metric.
func TestWrongKeyDoesNotRestoreFromUCS(t *testing.T) {
	store := newMemStore()
	first := startNode(t, "core-a", RolePrimary, "", listen(t), store, func(c *Config) { c.TranscriptAutoSave = 1 })
	waitFor(t, "primary", func() bool { return first.c.primary.Load() })
	cust, agent := first.chat(t)
	r, err := first.cl.Send(ctxT(t), msg(cust, "saved", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "saved", func() bool { return slices.Contains(store.indexes(cust.SessionId), r.Index) })
	first.stop()
	stored := store.indexes(cust.SessionId)

	second := startNode(t, "core-b", RolePrimary, "", listen(t), store, nil)
	waitFor(t, "second primary", func() bool { return second.c.primary.Load() })
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
	waitFor(t, "primary", func() bool { return n.c.primary.Load() })
	waitFor(t, "meta publish in flight", func() bool { return mm.inside.Load() > 0 })
	n.stop()
	if in := mm.inside.Load(); in != 0 {
		t.Fatalf("Serve returned with %d meta publishes still running", in)
	}
	if n.c.spawn(func(context.Context) { t.Error("ran after Serve returned") }) {
		t.Fatal("spawn accepted work after Serve returned")
	}
}
