package chatcore

import (
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"google.golang.org/protobuf/proto"
)

// FuzzReplicaMsg feeds arbitrary bytes to the backup's apply path as a
// replication message: it either fails to parse, or is applied (or refused
// with an error) without panicking, and every session keeps a gap-free log.
func FuzzReplicaMsg(f *testing.F) {
	seed := func(m *chatpb.ReplicaMsg) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&chatpb.ReplicaMsg{Seq: 1, Epoch: 1, Body: &chatpb.ReplicaMsg_Event{Event: &chatpb.Event{SessionId: "s", Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED}}})
	seed(&chatpb.ReplicaMsg{Seq: 2, Epoch: 1, Body: &chatpb.ReplicaMsg_Event{Event: &chatpb.Event{SessionId: "s", Index: 2, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pCust}}})
	seed(&chatpb.ReplicaMsg{Seq: 3, Epoch: 1, Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: &chatpb.SessionSnapshot{SessionId: "t",
		Events: []*chatpb.Event{{SessionId: "t", Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED}, {SessionId: "t", Index: 2, Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT}}}}})
	seed(&chatpb.ReplicaMsg{Seq: 4, Body: &chatpb.ReplicaMsg_Saved{Saved: &chatpb.SaveProgress{SessionId: "s", SavedThrough: 9}}})
	seed(&chatpb.ReplicaMsg{Seq: 5, Body: &chatpb.ReplicaMsg_Event{Event: &chatpb.Event{SessionId: "s", Index: 7, Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED}}})
	seed(&chatpb.ReplicaMsg{Seq: 7, Epoch: 1, Body: &chatpb.ReplicaMsg_Batch{Batch: &chatpb.ReplicaBatch{Msgs: []*chatpb.ReplicaMsg{
		{Seq: 6, Body: &chatpb.ReplicaMsg_Event{Event: &chatpb.Event{SessionId: "u", Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED}}},
		{Seq: 7, Body: &chatpb.ReplicaMsg_Saved{Saved: &chatpb.SaveProgress{SessionId: "u", SavedThrough: 1}}},
	}}}})
	c := newLocalCore(f, nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m chatpb.ReplicaMsg
		if err := proto.Unmarshal(b, &m); err != nil {
			return
		}
		m.Epoch = c.Epoch() // of the current epoch: fits, the body is what is fuzzed
		err := newApplier(c).Apply(&m)
		if snap := m.GetSnapshot(); snap != nil && !snap.Tombstone {
			if (err == nil) != (snap.SessionId != "" && gapFree(snap.SessionId, snap.Events)) {
				t.Fatalf("snapshot %v: err %v", snap, err)
			}
		}
		c.mu.RLock()
		defer c.mu.RUnlock()
		for id, s := range c.sessions {
			s.mu.Lock()
			for i, e := range s.log.Entries() {
				if e.Ev.Index != uint64(i+1) {
					s.mu.Unlock()
					t.Fatalf("session %q: index %d at position %d", id, e.Ev.Index, i)
				}
			}
			s.mu.Unlock()
		}
	})
}

// gapFree reports whether evs are events 1..n of session id.
func gapFree(id string, evs []*chatpb.Event) bool {
	for i, e := range evs {
		if e == nil || e.Index != uint64(i+1) || e.SessionId != id {
			return false
		}
	}
	return true
}
