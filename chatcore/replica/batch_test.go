package replica

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// sentMsgs is the primary's end of a Replicate stream that records what
// the sender writes.
type sentMsgs struct {
	grpc.ServerStream
	msgs []*chatpb.ReplicaMsg
}

func (s *sentMsgs) Send(m *chatpb.ReplicaMsg) error { s.msgs = append(s.msgs, m); return nil }
func (s *sentMsgs) Recv() (*chatpb.ReplicaAck, error) {
	panic("not used")
}

// queued is a sender queue: events of two sessions and save progress,
// a snapshot in the middle, then more events.
func queued() []*chatpb.ReplicaMsg {
	started, msg := chatpb.EventKind_EVENT_KIND_SESSION_STARTED, chatpb.EventKind_EVENT_KIND_MESSAGE
	return []*chatpb.ReplicaMsg{
		replEvent(1, "s1", 1, started),
		replEvent(2, "s2", 1, started),
		{Seq: 3, Body: &chatpb.ReplicaMsg_Saved{Saved: &chatpb.SaveProgress{SessionId: "s1", SavedThrough: 1}}},
		{Seq: 4, Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: &chatpb.SessionSnapshot{SessionId: "s3",
			Events: []*chatpb.Event{{SessionId: "s3", Index: 1, Kind: started}}}}},
		replEvent(5, "s1", 2, msg),
		replEvent(6, "s3", 2, msg),
		replEvent(7, "s2", 2, msg),
	}
}

// TestSenderBatchesRuns: runs of events and save progress go out as one
// ReplicaBatch each, whose seq is its last message's; a snapshot goes alone;
// a backup that did not ask for batches gets every message alone.
func TestSenderBatchesRuns(t *testing.T) {
	r := newTestReplicator(t, &fakeCore{}, &fakeAuthority{})
	st := &sentMsgs{}
	l := &Link{r: r, stream: st, batches: true}
	if err := l.write(queued(), 3, "core-a"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range st.msgs {
		if m.Epoch != 3 || m.Primary != "core-a" {
			t.Fatalf("message %d carries epoch %d primary %q", m.Seq, m.Epoch, m.Primary)
		}
		switch b := m.Body.(type) {
		case *chatpb.ReplicaMsg_Batch:
			seqs := []string{}
			for _, in := range b.Batch.Msgs {
				seqs = append(seqs, fmt.Sprint(in.Seq))
			}
			got = append(got, fmt.Sprintf("batch@%d[%s]", m.Seq, strings.Join(seqs, ",")))
		case *chatpb.ReplicaMsg_Snapshot:
			got = append(got, fmt.Sprintf("snapshot@%d", m.Seq))
		default:
			got = append(got, fmt.Sprintf("single@%d", m.Seq))
		}
	}
	if want := "batch@3[1,2,3] snapshot@4 batch@7[5,6,7]"; strings.Join(got, " ") != want {
		t.Fatalf("sent %q, want %q", strings.Join(got, " "), want)
	}

	// The backup applies what was sent, in order.
	b := newFakeTable()
	ap := NewApplier(b, role.New(), testMetrics().Replicated)
	for _, m := range st.msgs {
		if err := ap.Apply(m); err != nil {
			t.Fatalf("apply %d: %v", m.Seq, err)
		}
	}
	for id, n := range map[string]int{"s1": 2, "s2": 2, "s3": 2} {
		if got := b.events(id); got != n {
			t.Fatalf("backup holds %d events of %s, want %d", got, id, n)
		}
	}
	if e := b.entry("s1"); e == nil || e.saved != 1 {
		t.Fatalf("save progress of s1 not applied")
	}

	old := &sentMsgs{}
	l = &Link{r: r, stream: old}
	if err := l.write(queued(), 3, "core-a"); err != nil {
		t.Fatal(err)
	}
	if len(old.msgs) != 7 {
		t.Fatalf("a backup without batches got %d messages, want 7", len(old.msgs))
	}
	for _, m := range old.msgs {
		if m.GetBatch() != nil {
			t.Fatal("a backup without batches got a batch")
		}
	}
}

// TestSenderSplitsLongRuns: a run longer than maxBatchMsgs goes out as
// several batches.
func TestSenderSplitsLongRuns(t *testing.T) {
	r := newTestReplicator(t, &fakeCore{}, &fakeAuthority{})
	st := &sentMsgs{}
	l := &Link{r: r, stream: st, batches: true}
	var q []*chatpb.ReplicaMsg
	for i := range maxBatchMsgs + 10 {
		q = append(q, replEvent(uint64(i+1), "s", uint64(i+1), chatpb.EventKind_EVENT_KIND_MESSAGE))
	}
	if err := l.write(q, 1, "core-a"); err != nil {
		t.Fatal(err)
	}
	if len(st.msgs) != 2 || len(st.msgs[0].GetBatch().GetMsgs()) != maxBatchMsgs || st.msgs[0].Seq != maxBatchMsgs ||
		len(st.msgs[1].GetBatch().GetMsgs()) != 10 || st.msgs[1].Seq != maxBatchMsgs+10 {
		t.Fatalf("sent %d messages, want batches of %d and 10", len(st.msgs), maxBatchMsgs)
	}
}

// TestApplyBatchRefusesMalformed: a batch that is empty, out of sequence,
// not ending at the outer seq, or carrying what cannot be batched is
// refused (the backup resyncs).
func TestApplyBatchRefusesMalformed(t *testing.T) {
	started := chatpb.EventKind_EVENT_KIND_SESSION_STARTED
	snap := &chatpb.ReplicaMsg{Seq: 2, Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: &chatpb.SessionSnapshot{SessionId: "x"}}}
	for name, tc := range map[string]struct {
		seq  uint64
		msgs []*chatpb.ReplicaMsg
	}{
		"empty":          {seq: 1},
		"gap":            {seq: 3, msgs: []*chatpb.ReplicaMsg{replEvent(1, "a", 1, started), replEvent(3, "b", 1, started)}},
		"wrong end":      {seq: 9, msgs: []*chatpb.ReplicaMsg{replEvent(1, "a", 1, started), replEvent(2, "b", 1, started)}},
		"snapshot":       {seq: 2, msgs: []*chatpb.ReplicaMsg{replEvent(1, "a", 1, started), snap}},
		"nil entry":      {seq: 2, msgs: []*chatpb.ReplicaMsg{replEvent(1, "a", 1, started), nil}},
		"event gap":      {seq: 2, msgs: []*chatpb.ReplicaMsg{replEvent(1, "a", 1, started), replEvent(2, "a", 3, started)}},
		"empty event":    {seq: 1, msgs: []*chatpb.ReplicaMsg{{Seq: 1, Body: &chatpb.ReplicaMsg_Event{}}}},
		"nested batches": {seq: 1, msgs: []*chatpb.ReplicaMsg{{Seq: 1, Body: &chatpb.ReplicaMsg_Batch{Batch: &chatpb.ReplicaBatch{}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			ap := NewApplier(newFakeTable(), role.New(), testMetrics().Replicated)
			if err := ap.applyBatch(tc.seq, &chatpb.ReplicaBatch{Msgs: tc.msgs}); err == nil {
				t.Fatal("applied a malformed batch")
			}
		})
	}
}
