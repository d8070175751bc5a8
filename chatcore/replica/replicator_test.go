package replica

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// fakeCore records what the replicator asks of the core (Core); its
// snapshot is one session.
type fakeCore struct {
	mu        sync.Mutex
	inSync    int
	stepDowns []string
}

func (f *fakeCore) SnapshotTo(l *Link) int {
	l.Hold(&fakeSession{id: "old"}, &chatpb.SessionSnapshot{SessionId: "old"})
	return 1
}

func (f *fakeCore) StepDown(reason string, _ uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stepDowns = append(f.stepDowns, reason)
}

func (f *fakeCore) BackupInSync() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inSync++
}

func (f *fakeCore) counts() (inSync, stepDowns int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inSync, len(f.stepDowns)
}

// scriptedBackup is the primary's end of a Replicate stream whose backup
// the test plays: in is what the backup sends, out what the primary sent.
type scriptedBackup struct {
	ctx context.Context
	in  chan *chatpb.ReplicaAck
	out chan *chatpb.ReplicaMsg
}

func newScriptedBackup(ctx context.Context) *scriptedBackup {
	return &scriptedBackup{ctx: ctx, in: make(chan *chatpb.ReplicaAck, 16), out: make(chan *chatpb.ReplicaMsg, 1024)}
}

// Send keeps a copy of m, as a gRPC stream marshals it before it returns
// (the sender reuses its queue, the slice a batch's messages live in).
func (s *scriptedBackup) Send(m *chatpb.ReplicaMsg) error {
	select {
	case s.out <- proto.Clone(m).(*chatpb.ReplicaMsg):
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *scriptedBackup) Recv() (*chatpb.ReplicaAck, error) {
	select {
	case a := <-s.in:
		return a, nil
	case <-s.ctx.Done():
		return nil, io.EOF
	}
}

func (s *scriptedBackup) Context() context.Context { return s.ctx }

// next returns the next message the primary sent that is not a heartbeat,
// flattening a batch into its messages.
func (s *scriptedBackup) next(t *testing.T) []*chatpb.ReplicaMsg {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-s.out:
			if m.GetHeartbeat() {
				continue
			}
			if b := m.GetBatch(); b != nil {
				return b.Msgs
			}
			return []*chatpb.ReplicaMsg{m}
		case <-deadline:
			t.Fatal("the primary sent nothing within 10s")
			return nil
		}
	}
}

// fakeAuthority is a fencing authority holding epoch (err: it does not answer).
type fakeAuthority struct {
	mu    sync.Mutex
	epoch uint64
	err   error
}

func (a *fakeAuthority) CurrentEpoch(context.Context) (uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.epoch, a.err
}

func (a *fakeAuthority) set(epoch uint64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch, a.err = epoch, err
}

func newTestReplicator(t *testing.T, fake Core, auth Authority) *Replicator {
	t.Helper()
	// A generous timeout: a loaded machine must not time the backup out.
	cfg := Config{Name: "core-a", Timeout: 10 * time.Second, ConfirmTimeout: time.Second, NotPrimary: errNotPrimary}
	rs := role.New()
	rs.BecomePrimary(3, true, nil)
	return NewReplicator(fake, cfg, rs, auth, testMetrics(), discard())
}

// TestReplicatorAlone runs the primary's replicator without a Core: a
// scripted backup on the stream and a fake of the three things the
// replicator asks of the core (replicatorCore). The backup is in sync only
// once it acknowledged the snapshot; an event's copy completes only when
// the backup acknowledged a seq at or past it (acks are cumulative, per
// batch); an event of a session the backup lacks is not sent; a backup
// silent for replication-timeout is given up with the event uncertain.
func TestReplicatorAlone(t *testing.T) {
	fake := &fakeCore{}
	r := newTestReplicator(t, fake, &fakeAuthority{epoch: 3})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	backup := newScriptedBackup(ctx)
	served := make(chan error, 1)
	go func() { served <- r.Serve(backup) }()
	backup.in <- &chatpb.ReplicaAck{Hello: &chatpb.ReplicaHello{Name: "core-b", Epoch: 3, Batches: true}}

	snap := backup.next(t)
	done := backup.next(t)
	if len(snap) != 1 || snap[0].GetSnapshot().GetSessionId() != "old" || len(done) != 1 || !done[0].GetSnapshotDone() {
		t.Fatalf("sent %v then %v, want the snapshot then snapshot_done", snap, done)
	}
	if snap[0].Epoch != 3 || snap[0].Primary != "core-a" {
		t.Fatalf("snapshot carries epoch %d primary %q", snap[0].Epoch, snap[0].Primary)
	}
	l := r.Current()
	if l == nil || l.InSync() {
		t.Fatal("the link is missing or in sync before the backup acknowledged its snapshot")
	}
	backup.in <- &chatpb.ReplicaAck{Seq: done[0].Seq}
	waitFor(t, "the backup in sync", func() bool { n, _ := fake.counts(); return n == 1 && l.InSync() })

	// Three new sessions' first events, sent concurrently: none completes
	// before the backup's ack covers it.
	type result struct {
		id               string
		acked, uncertain bool
	}
	results := make(chan result, 3)
	for _, id := range []string{"s1", "s2", "s3"} {
		go func() {
			s := &fakeSession{id: id}
			acked, uncertain := copyToBackup(r, s, &chatpb.Event{SessionId: id, Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED}, true)
			results <- result{id, acked, uncertain}
		}()
	}
	seqOf := map[string]uint64{}
	for len(seqOf) < 3 {
		for _, m := range backup.next(t) {
			seqOf[m.GetEvent().GetSessionId()] = m.Seq
		}
	}
	noResult := func(what string) {
		t.Helper()
		select {
		case res := <-results:
			t.Fatalf("%s: the copy of %s completed (acked %v) before the backup acknowledged it", what, res.id, res.acked)
		case <-time.After(100 * time.Millisecond):
		}
	}
	noResult("nothing acknowledged")
	var first string
	for id, seq := range seqOf {
		if first == "" || seq < seqOf[first] {
			first = id
		}
	}
	backup.in <- &chatpb.ReplicaAck{Seq: seqOf[first]}
	select {
	case res := <-results:
		if res.id != first || !res.acked || res.uncertain {
			t.Fatalf("after the ack of %s (seq %d): %+v", first, seqOf[first], res)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the ack of seq %d did not complete the copy of %s", seqOf[first], first)
	}
	noResult("only the first acknowledged")
	backup.in <- &chatpb.ReplicaAck{Seq: max(seqOf["s1"], seqOf["s2"], seqOf["s3"])}
	for range 2 {
		select {
		case res := <-results:
			if !res.acked || res.uncertain {
				t.Fatalf("after the cumulative ack: %+v", res)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the cumulative ack did not complete every copy")
		}
	}

	// A session the backup does not hold (its snapshot predates the link)
	// is not sent: its second copy must come from elsewhere.
	if acked, uncertain := copyToBackup(r, &fakeSession{id: "away"}, &chatpb.Event{SessionId: "away", Index: 2}, true); acked || uncertain {
		t.Fatalf("an event of a session the backup lacks: acked %v uncertain %v", acked, uncertain)
	}

	// A silent backup: the copy gives up after replication-timeout, the
	// event uncertain (the backup may have applied it), the link dropped.
	// (Every copy above has returned and serve read the timeout before it
	// sent the snapshot: nothing reads it concurrently.)
	r.cfg.Timeout = 300 * time.Millisecond
	start := time.Now()
	s4 := &fakeSession{id: "s4"}
	acked, uncertain := copyToBackup(r, s4, &chatpb.Event{SessionId: "s4", Index: 1}, true)
	if acked || !uncertain || time.Since(start) < r.cfg.Timeout {
		t.Fatalf("silent backup: acked %v uncertain %v after %s", acked, uncertain, time.Since(start))
	}
	if r.Current() != nil {
		t.Fatal("the silent backup's link is still live")
	}
	select {
	case err := <-served:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("serve ended with %v, want Unavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not end with its link")
	}
	if _, n := fake.counts(); n != 0 {
		t.Fatalf("%d step downs", n)
	}
}

// TestReplicatorRefusesUnconfirmedEpoch: a hello's newer epoch makes the
// replicator ask the core to step down only when the fencing authority
// holds it; an authority that does not answer refuses the stream
// (Unavailable) and changes nothing.
func TestReplicatorRefusesUnconfirmedEpoch(t *testing.T) {
	auth := &fakeAuthority{epoch: 3}
	fake := &fakeCore{}
	r := newTestReplicator(t, fake, auth)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	b := newScriptedBackup(ctx)
	b.in <- &chatpb.ReplicaAck{Hello: &chatpb.ReplicaHello{Name: "core-b", Epoch: 9}}
	if err := r.Serve(b); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("unconfirmed epoch: %v", err)
	}
	if _, n := fake.counts(); n != 0 || r.Current() != nil {
		t.Fatalf("an unconfirmed epoch changed something: %d step downs, link %v", n, r.Current() != nil)
	}

	auth.set(0, errors.New("unreachable"))
	b = newScriptedBackup(ctx)
	b.in <- &chatpb.ReplicaAck{Hello: &chatpb.ReplicaHello{Name: "core-b", Epoch: 4}}
	if err := r.Serve(b); status.Code(err) != codes.Unavailable {
		t.Fatalf("an authority that does not answer: %v", err)
	}
	if _, n := fake.counts(); n != 0 {
		t.Fatalf("an unconfirmable epoch made the core step down")
	}

	auth.set(4, nil)
	b = newScriptedBackup(ctx)
	b.in <- &chatpb.ReplicaAck{Hello: &chatpb.ReplicaHello{Name: "core-b", Epoch: 4}}
	if err := r.Serve(b); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("confirmed epoch: %v", err)
	}
	if _, n := fake.counts(); n != 1 {
		t.Fatalf("a confirmed newer epoch: %d step downs, want 1", n)
	}
}

// TestSendToBackupResyncing: an event queued to a backup that has not
// acknowledged its snapshot is Resyncing; Wait with stop closed returns
// without the ack and without giving the backup up, and a later Wait sees
// the ack. Once the backup is in sync an event is not Resyncing.
func TestSendToBackupResyncing(t *testing.T) {
	fake := &fakeCore{}
	r := newTestReplicator(t, fake, &fakeAuthority{epoch: 3})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	backup := newScriptedBackup(ctx)
	go func() { _ = r.Serve(backup) }()
	backup.in <- &chatpb.ReplicaAck{Hello: &chatpb.ReplicaHello{Name: "core-b", Epoch: 3, Batches: true}}
	backup.next(t) // the snapshot of "old"
	backup.next(t) // snapshot_done, not acknowledged yet
	l := r.Current()
	if l == nil || l.InSync() {
		t.Fatal("the link is missing or in sync before the backup acknowledged its snapshot")
	}
	held := &fakeSession{id: "old"}
	held.SetLinkGen(l.gen)
	cp := r.SendToBackup(held, &chatpb.Event{SessionId: "old", Index: 2}, true)
	if !cp.Resyncing || !cp.Uncertain {
		t.Fatalf("queued behind the snapshot: resyncing %v uncertain %v, want both", cp.Resyncing, cp.Uncertain)
	}
	ev := backup.next(t)
	stop := make(chan struct{})
	close(stop)
	if cp.Wait(stop) {
		t.Fatal("acknowledged without the backup's ack")
	}
	if r.Current() != l {
		t.Fatal("a stopped wait gave the backup up")
	}
	backup.in <- &chatpb.ReplicaAck{Seq: ev[len(ev)-1].Seq}
	if !cp.Wait(nil) {
		t.Fatal("the backup's ack of the snapshot and the event did not complete the copy")
	}
	waitFor(t, "the backup in sync", func() bool { return l.InSync() })
	cp = r.SendToBackup(held, &chatpb.Event{SessionId: "old", Index: 3}, true)
	if cp.Resyncing {
		t.Fatal("an event to a backup in sync is resyncing")
	}
	m := backup.next(t)
	backup.in <- &chatpb.ReplicaAck{Seq: m[len(m)-1].Seq}
	if !cp.Wait(nil) {
		t.Fatal("the backup's ack did not complete the copy")
	}
}

// copyToBackup sends ev and waits for the backup's ack as the core's
// secondCopy does for a backup in sync: acked when nothing more is needed,
// else whether ev was queued without an ack.
func copyToBackup(r *Replicator, s Session, ev *chatpb.Event, needCopy bool) (acked, uncertain bool) {
	cp := r.SendToBackup(s, ev, needCopy)
	if cp.Wait(nil) {
		return true, false
	}
	return false, cp.Uncertain
}
