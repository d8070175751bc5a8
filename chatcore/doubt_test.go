package chatcore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// These tests hold the in-doubt rule (docs/chatcore.md, "Events in doubt")
// and the tombstones of sessions closed without a complete final save: the
// two chat core bugs the nemesis found (docs/chaos.md, "Results").

// doubtStore is a UCS that detects conflicts as ucsmock does (a different
// event at a stored index from the same or an older epoch is refused with
// ErrConflict) and can be told to let saves land but report a timeout (an
// uncertain outcome), to fail every save without storing anything, or to
// refuse for good any save of an index from refuseFrom on.
type doubtStore struct {
	*memStore
	mu         sync.Mutex
	landButErr int    // the next landButErr saves are stored, then reported as timed out
	down       bool   // every save fails (ErrUnavailable) and stores nothing
	refuseFrom uint64 // > 0: saves of an index >= refuseFrom fail with ErrConflict
	conflicts  int    // saves refused with ErrConflict
}

func newDoubtStore() *doubtStore { return &doubtStore{memStore: newMemStore()} }

func (s *doubtStore) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return SaveResult{}, fmt.Errorf("ucs down: %w", ErrUnavailable)
	}
	for _, ev := range req.Events {
		if s.refuseFrom > 0 && ev.Index >= s.refuseFrom {
			s.conflicts++
			return SaveResult{}, fmt.Errorf("refused at %d: %w", ev.Index, ErrConflict)
		}
	}
	if t, err := s.memStore.Transcript(ctx, req.ChatID); err == nil {
		for _, old := range t.Events {
			for _, ev := range req.Events {
				if ev.Index == old.Index && old.Epoch >= req.Epoch && !proto.Equal(ev, old) {
					s.conflicts++
					return SaveResult{}, fmt.Errorf("different event already stored at %d: %w", ev.Index, ErrConflict)
				}
			}
		}
	}
	res, err := s.memStore.Save(ctx, req)
	if err == nil && s.landButErr > 0 {
		s.landButErr--
		return SaveResult{}, fmt.Errorf("save: context deadline exceeded: %w", ErrUnavailable)
	}
	return res, err
}

func (s *doubtStore) set(f func(s *doubtStore)) { s.mu.Lock(); f(s); s.mu.Unlock() }

func (s *doubtStore) conflictCount() int { s.mu.Lock(); defer s.mu.Unlock(); return s.conflicts }

// stored returns the event UCS holds at index, nil if none.
func (s *doubtStore) stored(chatID string, index uint64) *chatpb.Event {
	t, err := s.memStore.Transcript(context.Background(), chatID)
	if err != nil {
		return nil
	}
	for _, ev := range t.Events {
		if ev.Index == index {
			return ev
		}
	}
	return nil
}

// agreesWithUCS fails the test when UCS holds, at an index of the core's
// log, an event other than the core's.
func agreesWithUCS(t *testing.T, store *doubtStore, log []*chatpb.Event) {
	t.Helper()
	for _, ev := range log {
		if st := store.stored(ev.SessionId, ev.Index); st != nil && !proto.Equal(st, sessionlog.Saved(ev)) {
			t.Errorf("index %d: the core committed %q, UCS holds %q", ev.Index, ev.Text, st.Text)
		}
	}
}

// soloPrimary starts a primary whose backup never comes: second copies go to UCS.
func soloPrimary(t *testing.T, store TranscriptStore, mod func(*Config)) *node {
	lb := listen(t)
	peer := lb.Addr().String()
	lb.Close()
	a := startNode(t, "core-a", RolePrimary, peer, listen(t), store, mod)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	return a
}

// A second copy in UCS that lands but is reported as failed (timeout)
// leaves its event in doubt: the next append first saves the same event
// again (idempotent), commits it at its index, and only then takes the
// next index; the client's resend is a duplicate at that index.
func TestUncertainUCSCopyStaysInDoubt(t *testing.T) {
	store := newDoubtStore()
	a := soloPrimary(t, store, nil)
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	one, err := a.cl.Send(ctx, msg(cust, "one", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	store.set(func(s *doubtStore) { s.landButErr = 1 })
	if _, err := a.cl.Send(ctx, msg(cust, "two", "c2")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send whose second copy timed out: %v", err)
	}
	if g := gaugeValue(a.c.m.inDoubt); g != 1 {
		t.Fatalf("in-doubt gauge %v, want 1", g)
	}
	if ev := store.stored(cust.SessionId, one.Index+1); ev == nil || ev.Text != "two" {
		t.Fatalf("the store did not keep the timed-out save: %v", ev)
	}
	three, err := a.cl.Send(ctx, msg(cust, "three", "c3"))
	if err != nil {
		t.Fatalf("send after an event in doubt: %v (UCS conflicts %d)", err, store.conflictCount())
	}
	if three.Index != one.Index+2 {
		t.Fatalf("three at %d, want %d (after two, in doubt at %d)", three.Index, one.Index+2, one.Index+1)
	}
	two, err := a.cl.Send(ctx, msg(cust, "two", "c2"))
	if err != nil || !two.Duplicate || two.Index != one.Index+1 {
		t.Fatalf("resend of the event that was in doubt: %v %v", two, err)
	}
	agreesWithUCS(t, store, a.log(cust.SessionId))
	if n := store.conflictCount(); n != 0 {
		t.Errorf("UCS refused %d saves as conflicts", n)
	}
	if g := gaugeValue(a.c.m.inDoubt); g != 0 {
		t.Errorf("in-doubt gauge %v after resolution", g)
	}
	if n := counterValue(a.c.m.doubtResolved.WithLabelValues("committed")); n != 1 {
		t.Errorf("resolutions committed %v, want 1", n)
	}
}

// The nemesis's case: the backup away, the second copy in UCS times out
// (and lands), the backup comes back. The next append must not give the
// index in doubt to another event: the backup's ack of the same event
// resolves it, then the chat goes on after it.
func TestUncertainCopyResolvedByReturningBackup(t *testing.T) {
	store := newDoubtStore()
	la, lb := listen(t), listen(t)
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	proxy := newProxy(t, la.Addr().String())
	witness := WithWitness(func(ctx context.Context, w, target string) (bool, error) { return true, nil })
	b := startNode(t, "core-b", RoleBackup, proxy.addr, lb, store, func(c *Config) { c.Witness = "127.0.0.1:1" }, witness)
	waitInSync(t, a, "core-b")
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	one, err := a.cl.Send(ctx, msg(cust, "one", "c1"))
	if err != nil {
		t.Fatal(err)
	}

	proxy.cut()
	waitFor(t, "a lost the link", func() bool { return a.c.repl.Current() == nil })
	store.set(func(s *doubtStore) { s.landButErr = 1 })
	if _, err := a.cl.Send(ctx, msg(cust, "two", "c2")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send whose second copy timed out: %v", err)
	}
	store.set(func(s *doubtStore) { s.down = true }) // only the backup can resolve it now
	proxy.heal()
	waitInSync(t, a, "core-b")

	three, err := a.cl.Send(ctx, msg(cust, "three", "c3"))
	if err != nil {
		t.Fatalf("send with the backup back: %v", err)
	}
	if three.Index == one.Index+1 {
		t.Fatalf("three acknowledged at %d, the index of two in doubt (UCS holds two there)", three.Index)
	}
	store.set(func(s *doubtStore) { s.down = false })
	two, err := a.cl.Send(ctx, msg(cust, "two", "c2"))
	if err != nil || !two.Duplicate || two.Index != one.Index+1 {
		t.Fatalf("resend of the event that was in doubt: %v %v", two, err)
	}
	agreesWithUCS(t, store, a.log(cust.SessionId))
	waitFor(t, "backup has the log", func() bool { return sameLog(a.log(cust.SessionId), b.log(cust.SessionId)) })
	if b.c.role.IsPrimary() || !a.c.role.IsPrimary() {
		t.Fatal("a failover happened on a link cut")
	}
}

// While the event stays in doubt (neither the backup nor UCS gives a
// definite copy), every append of the session answers Unavailable and
// nothing takes its index; a session without an event in doubt is not
// held back.
func TestInDoubtHoldsTheSession(t *testing.T) {
	store := newDoubtStore()
	a := soloPrimary(t, store, nil)
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	other, _ := a.chat(t)
	n := len(a.log(cust.SessionId))
	store.set(func(s *doubtStore) { s.landButErr = 1 })
	if _, err := a.cl.Send(ctx, msg(cust, "two", "c2")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send whose second copy timed out: %v", err)
	}
	store.set(func(s *doubtStore) { s.down = true })
	for i := range 3 {
		if _, err := a.cl.Send(ctx, msg(cust, fmt.Sprint("later ", i), "")); status.Code(err) != codes.Unavailable {
			t.Fatalf("send %d while in doubt: %v", i, err)
		}
	}
	if got := len(a.log(cust.SessionId)); got != n {
		t.Fatalf("log grew from %d to %d while an event was in doubt", n, got)
	}
	store.set(func(s *doubtStore) { s.down = false })
	if _, err := a.cl.Send(ctx, msg(other, "elsewhere", "")); err != nil {
		t.Fatalf("another session is held back: %v", err)
	}
	// The janitor resolves it without any new append.
	waitFor(t, "resolved by the janitor", func() bool { return len(a.log(cust.SessionId)) == n+1 })
	if got := a.log(cust.SessionId)[n]; got.Text != "two" {
		t.Fatalf("index %d holds %q", n+1, got.Text)
	}
	agreesWithUCS(t, store, a.log(cust.SessionId))
}

// closeOnRefusal is the configuration of the nemesis's run: every message
// saved, and a session closed when UCS refuses a save for good.
func closeOnRefusal(c *Config) {
	c.TranscriptAutoSave = 1
	c.TranscriptSaveOnError = SaveOnErrorClose
	c.EndedSessionLinger = 50 * time.Millisecond
}

// A session the core closed after UCS refused a save for good, and then
// forgot, must not come back from UCS's older copy: the acknowledged events
// UCS lacks would vanish and their indexes be given again.
func TestClosedSessionNotRestoredFromOlderUCS(t *testing.T) {
	store := newDoubtStore()
	a := startNode(t, "core-a", RolePrimary, "", listen(t), store, closeOnRefusal)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	ctx := ctxT(t)
	cust, agent := a.chat(t)
	one, err := a.cl.Send(ctx, msg(cust, "one", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one saved", func() bool { return store.stored(cust.SessionId, one.Index) != nil })
	store.set(func(s *doubtStore) { s.refuseFrom = one.Index + 1 })
	two, err := a.cl.Send(ctx, msg(cust, "two", "c2"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "session closed and forgotten", func() bool { return a.c.session(cust.SessionId) == nil })
	restored := counterValue(a.c.m.restored.WithLabelValues("ucs"))

	r, err := a.cl.Send(ctx, msg(agent, "after the close", ""))
	if err == nil {
		t.Fatalf("a closed session was reopened from UCS's older copy: new event at %d (two was acknowledged at %d)", r.Index, two.Index)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("send to a closed session: %v, want FailedPrecondition (ended)", err)
	}
	if got := counterValue(a.c.m.restored.WithLabelValues("ucs")); got != restored {
		t.Fatalf("restored from UCS %v times", got-restored)
	}
	if n := gaugeValue(a.c.m.tombstones); n != 1 {
		t.Errorf("tombstones gauge %v, want 1", n)
	}
}

// The tombstone travels to the backup: a backup promoted after the primary
// forgot the session does not reopen it from UCS either, and neither does a
// backup that joined after the session was forgotten (it gets the
// tombstone in the snapshot).
func TestTombstoneReplicated(t *testing.T) {
	store := newDoubtStore()
	a, b := pair(t, store, closeOnRefusal)
	ctx := ctxT(t)
	cust, agent := a.chat(t)
	one, err := a.cl.Send(ctx, msg(cust, "one", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one saved", func() bool { return store.stored(cust.SessionId, one.Index) != nil })
	store.set(func(s *doubtStore) { s.refuseFrom = one.Index + 1 })
	if _, err := a.cl.Send(ctx, msg(cust, "two", "c2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "forgotten on both", func() bool {
		return a.c.session(cust.SessionId) == nil && b.c.session(cust.SessionId) == nil
	})
	if !b.c.tombs.has(cust.SessionId) {
		t.Fatal("the backup has no tombstone of the closed session")
	}
	a.kill()
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() })
	if _, err := b.cl.Send(ctx, msg(agent, "after failover", "")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("send to a closed session on the promoted backup: %v, want FailedPrecondition (ended)", err)
	}

	// A new backup with no memory learns it from the snapshot.
	lc := listen(t)
	c := startNode(t, "core-c", RoleBackup, b.addr, lc, store, closeOnRefusal)
	waitInSync(t, b, "core-c")
	if !c.c.tombs.has(cust.SessionId) {
		t.Fatal("a backup that joined later has no tombstone of the closed session")
	}
}

// The backup path: the event reaches the backup (it applies it) but its ack
// never comes back, and UCS refuses the copy for good. The backup may hold
// the event, so it is in doubt: the next message must not take its index
// with a copy in UCS only, or a promoted backup (which merges only what UCS
// holds beyond its own log) keeps the first event and loses the
// acknowledged second.
func TestLostAckLeavesEventInDoubt(t *testing.T) {
	store := newDoubtStore()
	la, lb := listen(t), listen(t)
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil)
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	proxy := newProxy(t, la.Addr().String())
	var aAlive atomic.Bool
	aAlive.Store(true)
	witness := WithWitness(func(ctx context.Context, w, target string) (bool, error) { return aAlive.Load(), nil })
	b := startNode(t, "core-b", RoleBackup, proxy.addr, lb, store, func(c *Config) { c.Witness = "127.0.0.1:1" }, witness)
	waitInSync(t, a, "core-b")
	ctx := ctxT(t)
	cust, _ := a.chat(t)
	one, err := a.cl.Send(ctx, msg(cust, "one", "c1"))
	if err != nil {
		t.Fatal(err)
	}

	proxy.holdUp.Store(true) // the backup's acks (and any new hello) are held
	store.set(func(s *doubtStore) { s.refuseFrom = one.Index + 1 })
	if _, err := a.cl.Send(ctx, msg(cust, "two", "c2")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send whose ack was lost and UCS refused: %v", err)
	}
	waitFor(t, "the backup applied two", func() bool { return len(b.log(cust.SessionId)) == int(one.Index+1) })
	// The backup saw its link break while the primary lived: its replica is
	// stale, so a promotion merges what UCS holds beyond it (the test's
	// store lists no chats).
	waitFor(t, "the backup marked its replica stale", func() bool { return b.c.replicaStale.Load() })
	if g := gaugeValue(a.c.m.inDoubt); g != 1 {
		t.Errorf("in-doubt gauge %v, want 1", g)
	}
	store.set(func(s *doubtStore) { s.refuseFrom = 0 })
	three, err := a.cl.Send(ctx, msg(cust, "three", "c3"))
	if err != nil {
		t.Fatalf("send with UCS back: %v", err)
	}
	if three.Index != one.Index+2 {
		t.Fatalf("three acknowledged at %d, want %d (two in doubt at %d)", three.Index, one.Index+2, one.Index+1)
	}
	aAlive.Store(false)
	proxy.cut() // releases the held bytes too: the link breaks, not hangs
	a.kill()
	waitFor(t, "b promoted", func() bool { return b.c.role.IsPrimary() && !b.c.role.Unmerged() })
	got := b.log(cust.SessionId)
	if len(got) < int(three.Index) || got[three.Index-1].Text != "three" {
		t.Fatalf("the acknowledged three is not at %d on the promoted backup: %v", three.Index, got)
	}
	agreesWithUCS(t, store, got)
}
