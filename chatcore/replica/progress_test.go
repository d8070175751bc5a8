package replica

import (
	"context"
	"fmt"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// TestProgressNegotiated flushes the save progress of many sessions to a
// backup whose hello asked for progress batches, and to an older one that
// did not: the first gets one SaveProgressBatch (one seq), the older one a
// SaveProgress per session (batched in ReplicaBatch as before); a session
// the link does not hold is left out of both. Each backup applies what it
// got and holds every session's progress.
func TestProgressNegotiated(t *testing.T) {
	const n = 50
	for _, tt := range []struct {
		name            string
		progressBatches bool
		wantMsgs        int // stream messages carrying the progress
	}{
		{"new backup: one message", true, 1},
		{"older backup: one per session", false, n},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeCore{}
			r := newTestReplicator(t, fake, &fakeAuthority{epoch: 3})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			backup := newScriptedBackup(ctx)
			served := make(chan error, 1)
			go func() { served <- r.Serve(backup) }()
			backup.in <- &chatpb.ReplicaAck{Hello: &chatpb.ReplicaHello{Name: "core-b", Epoch: 3, Batches: true, ProgressBatches: tt.progressBatches}}
			backup.next(t) // the snapshot
			done := backup.next(t)
			backup.in <- &chatpb.ReplicaAck{Seq: done[len(done)-1].Seq}
			l := r.Current()
			waitFor(t, "the backup in sync", func() bool { return l.InSync() })
			if l.ProgressBatches() != tt.progressBatches {
				t.Fatalf("link ProgressBatches = %v, the hello said %v", l.ProgressBatches(), tt.progressBatches)
			}

			table := newFakeTable()
			for i := range n {
				s := &fakeSession{id: fmt.Sprintf("s%d", i), saved: uint64(i + 1)}
				s.SetLinkGen(l.gen)
				table.Put(&chatpb.SessionSnapshot{SessionId: s.id})
				r.Progress(s, false)
			}
			other := &fakeSession{id: "elsewhere", saved: 9}
			other.SetLinkGen(l.gen + 1) // held by a newer link: not this backup's
			table.Put(&chatpb.SessionSnapshot{SessionId: other.id})
			r.Progress(other, false)
			r.flushProgress()

			ap := NewApplier(table, role.New(), testMetrics().Replicated)
			var msgs, entries int
			for entries < n {
				m := <-backup.out
				if m.GetHeartbeat() {
					continue
				}
				msgs++
				switch {
				case m.GetSavedBatch() != nil:
					entries += len(m.GetSavedBatch().Progress)
				case m.GetBatch() != nil:
					for _, in := range m.GetBatch().Msgs {
						if in.GetSaved() == nil {
							t.Fatalf("a batch carries %T, want save progress", in.Body)
						}
						entries++
					}
					msgs += len(m.GetBatch().Msgs) - 1 // count the inner messages
				case m.GetSaved() != nil:
					entries++
				default:
					t.Fatalf("unexpected message %T", m.Body)
				}
				if !tt.progressBatches && m.GetSavedBatch() != nil {
					t.Fatal("an older backup got a SaveProgressBatch")
				}
				if err := ap.Apply(m); err != nil {
					t.Fatalf("apply: %v", err)
				}
			}
			if msgs != tt.wantMsgs || entries != n {
				t.Fatalf("progress of %d sessions in %d messages, want %d in %d", entries, msgs, n, tt.wantMsgs)
			}
			for i := range n {
				if e := table.entry(fmt.Sprintf("s%d", i)); e.saved != uint64(i+1) {
					t.Fatalf("backup holds s%d saved through %d, want %d", i, e.saved, i+1)
				}
			}
			if e := table.entry(other.id); e.saved != 0 {
				t.Fatal("the progress of a session another link holds was sent")
			}
		})
	}
}

// TestProgressBatchSplits sends the progress of more sessions than one
// SaveProgressBatch carries as several.
func TestProgressBatchSplits(t *testing.T) {
	r := newTestReplicator(t, &fakeCore{}, &fakeAuthority{})
	l := &Link{r: r, gen: 7, progressBatches: true, wake: make(chan struct{}, 1), done: make(chan struct{})}
	r.attach(l)
	for i := range maxProgressPerMsg + 10 {
		s := &fakeSession{id: fmt.Sprint(i)}
		s.SetLinkGen(7)
		r.Progress(s, false)
	}
	r.flushProgress()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) != 2 || len(l.queue[0].GetSavedBatch().GetProgress())+len(l.queue[1].GetSavedBatch().GetProgress()) != maxProgressPerMsg+10 {
		t.Fatalf("queued %d messages, want 2 SaveProgressBatch carrying %d entries", len(l.queue), maxProgressPerMsg+10)
	}
}
