package chatcore

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/ucsmock"
)

func joinedCount(evs []*chatpb.Event) int {
	n := 0
	for _, ev := range evs {
		if ev.Kind == chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED {
			n++
		}
	}
	return n
}

func startReq(id string) *chatpb.StartSessionRequest {
	return &chatpb.StartSessionRequest{Service: "support", Nickname: "Ann", ClientRequestId: id}
}

func agentJoin(sid, id string) *chatpb.JoinRequest {
	return &chatpb.JoinRequest{SessionId: sid, Nickname: "Bob", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT,
		ServiceToken: "svc-token", ClientRequestId: id}
}

func sameAuth(a, b *chatpb.Auth) bool {
	return a.GetSessionId() == b.GetSessionId() && a.GetParticipantId() == b.GetParticipantId() && a.GetSecureKey() == b.GetSecureKey()
}

func TestStartSessionRetryWithSameRequestID(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	watch, err := tc.cl.WatchSessions(ctx, &chatpb.WatchSessionsRequest{ServiceToken: "svc-token"})
	if err != nil {
		t.Fatal(err)
	}
	// The stream opens before the server has registered the watcher: wait
	// for it, or the sessions below arrive as a snapshot in map order.
	waitFor(t, "the watcher registered", func() bool {
		return tc.c.watch.count() == 1
	})
	first, err := tc.cl.StartSession(ctx, startReq("req-1"))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	again, err := tc.cl.StartSession(ctx, startReq("req-1"))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !sameAuth(first.Auth, again.Auth) || again.NextIndex != first.NextIndex {
		t.Fatalf("retry answered %v, first %v", again, first)
	}
	if st, err := tc.cl.Status(ctx, &chatpb.StatusRequest{}); err != nil || st.LiveSessions != 1 {
		t.Fatalf("status after the retry: %v %v, want 1 live session", st, err)
	}
	if n := tc.metric(t, "hachat_core_request_retries_total"); n != 1 {
		t.Errorf("request retries metric %v, want 1", n)
	}
	// The retried key works, and the log holds one customer join.
	evs := tc.events(t, again.Auth)
	if joinedCount(evs) != 1 {
		t.Fatalf("events %v: want one PARTICIPANT_JOINED", kinds(evs))
	}
	for _, ev := range evs {
		if ev.ClientRequestId != "" || ev.SecureKey != "" || ev.KeyHash != "" {
			t.Fatalf("event %d leaks internal fields to a client: %v", ev.Index, ev)
		}
	}
	// A different id starts a different session; the watcher saw the first
	// session once and then this one.
	other, err := tc.cl.StartSession(ctx, startReq("req-2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{first.Auth.SessionId, other.Auth.SessionId} {
		ch, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ch.Kind != chatpb.SessionChange_KIND_STARTED || ch.SessionId != want {
			t.Fatalf("watch got %v %s, want STARTED %s", ch.Kind, ch.SessionId, want)
		}
	}
	// No request id: two calls, two sessions (the old behaviour).
	a, _ := tc.cl.StartSession(ctx, startReq(""))
	b, _ := tc.cl.StartSession(ctx, startReq(""))
	if a.GetAuth().GetSessionId() == "" || a.GetAuth().GetSessionId() == b.GetAuth().GetSessionId() {
		t.Fatalf("calls without a request id: %v %v", a, b)
	}
}

func TestJoinRetryWithSameRequestID(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	start, err := tc.cl.StartSession(ctx, startReq("s-1"))
	if err != nil {
		t.Fatal(err)
	}
	sid := start.Auth.SessionId
	first, err := tc.cl.Join(ctx, agentJoin(sid, "j-1"))
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	again, err := tc.cl.Join(ctx, agentJoin(sid, "j-1"))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !sameAuth(first.Auth, again.Auth) || again.NextIndex != first.NextIndex {
		t.Fatalf("retry answered %v, first %v", again, first)
	}
	if n := joinedCount(tc.events(t, again.Auth)); n != 2 {
		t.Fatalf("%d PARTICIPANT_JOINED, want 2 (customer, one agent)", n)
	}
	// The customer's start id cannot fetch the customer's key through Join.
	if _, err := tc.cl.Join(ctx, agentJoin(sid, "s-1")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("join with the customer's request id: %v", err)
	}
	// Another id is another agent.
	if r, err := tc.cl.Join(ctx, agentJoin(sid, "j-2")); err != nil || r.Auth.ParticipantId == first.Auth.ParticipantId {
		t.Fatalf("a second join id: %v %v", r, err)
	}
	// A retry after the session ended still answers the first join, but a new join is refused.
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: start.Auth, EndSession: true}); err != nil {
		t.Fatal(err)
	}
	if r, err := tc.cl.Join(ctx, agentJoin(sid, "j-1")); err != nil || !sameAuth(r.Auth, first.Auth) {
		t.Fatalf("retry after the end: %v %v", r, err)
	}
	if _, err := tc.cl.Join(ctx, agentJoin(sid, "j-3")); err == nil {
		t.Fatal("a new join into an ended session succeeded")
	}
	// Bad request ids change nothing.
	long := string(make([]byte, maxClientIDLen+1))
	if _, err := tc.cl.StartSession(ctx, startReq(long)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("long request id: %v", err)
	}
}

func TestStartSessionRetryAnsweredAfterFailover(t *testing.T) {
	store := newMemStore()
	a, b := pair(t, store, func(c *Config) { c.TranscriptAutoSave = 1 })
	ctx := ctxT(t)
	first, err := a.cl.StartSession(ctx, startReq("fo-1"))
	if err != nil {
		t.Fatal(err)
	}
	join, err := a.cl.Join(ctx, agentJoin(first.Auth.SessionId, "fo-j"))
	if err != nil {
		t.Fatal(err)
	}
	a.kill() // the answers were "lost": the client retries at the promoted backup
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	again, err := b.cl.StartSession(ctx, startReq("fo-1"))
	if err != nil {
		t.Fatalf("retry at b: %v", err)
	}
	if !sameAuth(first.Auth, again.Auth) {
		t.Fatalf("b answered %v, a answered %v", again.Auth, first.Auth)
	}
	j2, err := b.cl.Join(ctx, agentJoin(first.Auth.SessionId, "fo-j"))
	if err != nil || !sameAuth(j2.Auth, join.Auth) {
		t.Fatalf("join retry at b: %v %v", j2, err)
	}
	st, err := b.cl.Status(ctx, &chatpb.StatusRequest{})
	if err != nil || st.LiveSessions != 1 {
		t.Fatalf("status of b: %v %v, want 1 live session", st, err)
	}
	evs, err := b.cl.Events(ctx, &chatpb.EventsRequest{Auth: again.Auth, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	if n := joinedCount(evs.Events); n != 2 {
		t.Fatalf("%d PARTICIPANT_JOINED at b, want 2", n)
	}
	// UCS never holds a secure key.
	waitFor(t, "transcript saved", func() bool {
		tr, err := store.Transcript(ctx, first.Auth.SessionId)
		return err == nil && len(tr.Events) >= 3
	})
	tr, _ := store.Transcript(ctx, first.Auth.SessionId)
	for _, ev := range tr.Events {
		if ev.SecureKey != "" {
			t.Fatalf("UCS holds a secure key in event %d", ev.Index)
		}
	}
}

// TestStartSessionRetryAfterRestoreFromUCS: a StartSession whose first
// attempt was acknowledged with its second copy in UCS alone (the backup's
// link was cut) and whose answer was lost with the primary is retried at
// the promoted backup, which restored the session from UCS: UCS never holds
// a secure key, so nobody can answer with the first attempt's key. The
// retry gets a new session instead of an error (the first one, whose
// customer nobody can authenticate as, idles out), and a further retry is
// answered from that new session.
func TestStartSessionRetryAfterRestoreFromUCS(t *testing.T) {
	p := startGossipCutPair(t, ucsmock.NewMemStore(1)) // it lists its chats: the promoted backup finds the session only UCS holds
	a, b := p.a, p.b
	p.cut(t)
	ctx := ctxT(t)
	lost, err := a.cl.StartSession(ctx, startReq("ucs-1")) // acknowledged with UCS as its second copy; the answer is "lost"
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b marks its replica stale", func() bool { return b.c.replicaStale.Load() })
	p.killPrimary()
	waitFor(t, "b primary, holding the session restored from UCS", func() bool {
		return b.c.role.IsPrimary() && b.c.session(lost.Auth.SessionId) != nil
	})
	again, err := b.cl.StartSession(ctx, startReq("ucs-1"))
	if err != nil {
		t.Fatalf("retry at b after the restore from UCS: %v, want a session", err)
	}
	if again.Auth.SessionId == lost.Auth.SessionId {
		t.Fatalf("the retry answered the restored session %s, whose key b cannot know", lost.Auth.SessionId)
	}
	if _, err := b.cl.Send(ctx, msg(again.Auth, "hello", "h1")); err != nil {
		t.Fatalf("the retry's key does not work: %v", err)
	}
	third, err := b.cl.StartSession(ctx, startReq("ucs-1"))
	if err != nil || !sameAuth(third.Auth, again.Auth) {
		t.Fatalf("a further retry: %v %v, want the retry's answer %v", third.GetAuth(), err, again.Auth)
	}
	if _, err := b.cl.Events(ctx, &chatpb.EventsRequest{Auth: lost.Auth, FromIndex: 1}); err != nil {
		t.Fatalf("the first session at b with its key (the client that did get the answer still gets in): %v", err)
	}
}
