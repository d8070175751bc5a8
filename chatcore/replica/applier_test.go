package replica

import (
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// TestApplierAlone runs the backup's applier without a Core, over a fake
// session table (Table): a snapshot and a batch that fit are
// applied; a batch (or any message) of an epoch older than the newest
// known is refused and changes nothing; a newer epoch becomes known; a
// batch whose seqs do not run up to its own, an event after a gap and a
// snapshot with a gap are refused; snapshot_done forgets the sessions the
// stream did not carry.
func TestApplierAlone(t *testing.T) {
	fake := newFakeTable()
	fake.sessions["gone"] = &fakeEntry{} // a session the primary no longer has
	rs := role.New()
	rs.Observe(5)
	ap := NewApplier(fake, rs, testMetrics().Replicated)

	started, msg := chatpb.EventKind_EVENT_KIND_SESSION_STARTED, chatpb.EventKind_EVENT_KIND_MESSAGE
	ev := func(sid string, idx uint64, kind chatpb.EventKind) *chatpb.Event {
		return &chatpb.Event{SessionId: sid, Index: idx, Kind: kind}
	}
	batch := func(seq, epoch uint64, msgs ...*chatpb.ReplicaMsg) *chatpb.ReplicaMsg {
		return &chatpb.ReplicaMsg{Seq: seq, Epoch: epoch, Primary: "core-a", Body: &chatpb.ReplicaMsg_Batch{Batch: &chatpb.ReplicaBatch{Msgs: msgs}}}
	}
	apply := func(what string, m *chatpb.ReplicaMsg, ok bool) {
		t.Helper()
		err := ap.Admit(m)
		if err == nil {
			err = ap.Apply(m)
		}
		if (err == nil) != ok {
			t.Fatalf("%s: err %v, want ok %v", what, err, ok)
		}
	}

	apply("snapshot", &chatpb.ReplicaMsg{Seq: 1, Epoch: 5, Primary: "core-a", Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: &chatpb.SessionSnapshot{
		SessionId: "s1", Events: []*chatpb.Event{ev("s1", 1, started)}}}}, true)
	if n := fake.events("s1"); n != 1 {
		t.Fatalf("s1 holds %d events after its snapshot", n)
	}

	stale := batch(3, 4, replEvent(2, "s1", 2, msg), replEvent(3, "s2", 1, started))
	if err := ap.Apply(stale); err == nil {
		t.Fatal("applied a batch of epoch 4 on a core that knows epoch 5")
	}
	apply("a batch of an older epoch", stale, false)
	if fake.events("s1") != 1 || fake.events("s2") != -1 || rs.Epoch() != 5 {
		t.Fatalf("the stale batch changed something: s1 %d events, s2 %d, epoch %d", fake.events("s1"), fake.events("s2"), rs.Epoch())
	}

	apply("a batch of the epoch", batch(3, 5, replEvent(2, "s1", 2, msg), replEvent(3, "s2", 1, started),
		&chatpb.ReplicaMsg{Seq: 4, Body: &chatpb.ReplicaMsg_Saved{Saved: &chatpb.SaveProgress{SessionId: "s1", SavedThrough: 2}}}), false)
	apply("a batch ending at its seq", batch(4, 5, replEvent(2, "s1", 2, msg), replEvent(3, "s2", 1, started),
		&chatpb.ReplicaMsg{Seq: 4, Body: &chatpb.ReplicaMsg_Saved{Saved: &chatpb.SaveProgress{SessionId: "s1", SavedThrough: 2}}}), true)
	if fake.events("s1") != 2 || fake.events("s2") != 1 || fake.entry("s1").saved != 2 {
		t.Fatalf("after the batch: s1 %d events, s2 %d", fake.events("s1"), fake.events("s2"))
	}

	apply("an event after a gap", &chatpb.ReplicaMsg{Seq: 5, Epoch: 5, Body: &chatpb.ReplicaMsg_Event{Event: ev("s1", 4, msg)}}, false)
	apply("a snapshot with a gap", &chatpb.ReplicaMsg{Seq: 5, Epoch: 5, Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: &chatpb.SessionSnapshot{
		SessionId: "s3", Events: []*chatpb.Event{ev("s3", 1, started), ev("s3", 3, msg)}}}}, false)
	if fake.events("s1") != 2 || fake.events("s3") != -1 {
		t.Fatalf("a refused message changed something: s1 %d events, s3 %d", fake.events("s1"), fake.events("s3"))
	}

	apply("a newer primary's event", &chatpb.ReplicaMsg{Seq: 1, Epoch: 6, Body: &chatpb.ReplicaMsg_Event{Event: ev("s1", 3, msg)}}, true)
	if rs.Epoch() != 6 || fake.events("s1") != 3 {
		t.Fatalf("after epoch 6: known %d, s1 %d events", rs.Epoch(), fake.events("s1"))
	}
	apply("epoch 5 after epoch 6", &chatpb.ReplicaMsg{Seq: 2, Epoch: 5, Body: &chatpb.ReplicaMsg_Heartbeat{Heartbeat: true}}, false)

	if dropped, kept := ap.Synced(); dropped != 1 || kept != 2 || fake.entry("gone") != nil {
		t.Fatalf("snapshot_done dropped %d, kept %d (gone still there: %v)", dropped, kept, fake.entry("gone") != nil)
	}
}
