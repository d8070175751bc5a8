package replica

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
)

// This file is the primary's side of replication. The backup dials the
// primary and opens Replication.Replicate (the backup is the side that must
// act when the stream breaks, so it owns the connection). The primary sends
// a snapshot of every session, snapshot_done, then every committed event in
// order; the backup acknowledges cumulatively. An append waits for the
// backup's ack of its event; a session whose snapshot the backup does not
// have yet, a missing backup, or a backup silent for replication-timeout
// make the append take its second copy from elsewhere (the core's UCS
// fallback) instead.

// ErrLinkLost is what a copy waiting on a link that died gets.
var ErrLinkLost = errors.New("backup link lost")

// Core is what the primary's replicator needs of the core: a snapshot of
// every session queued on a new link (SnapshotTo calls Link.Hold for each
// session under the session's append lock, and Link.Snapshot for each
// tombstone), a step down when the fencing authority confirms that a
// backup knows a newer epoch, and word that a backup is in sync again.
type Core interface {
	SnapshotTo(l *Link) int
	StepDown(reason string, newer uint64)
	BackupInSync()
}

// Session is one session of the primary as the replicator sees it.
type Session interface {
	// LinkGen is the generation of the backup link that holds the session
	// (its snapshot or its first event went out on it); SetLinkGen records
	// it. 0: none.
	LinkGen() uint64
	SetLinkGen(gen uint64)
	// SaveProgress is the session's transcript save progress now.
	SaveProgress() *chatpb.SaveProgress
}

// Authority confirms an epoch a backup claims: the epoch the fencing
// authority holds for this pair now.
type Authority interface {
	CurrentEpoch(ctx context.Context) (uint64, error)
}

// Stream is the primary's end of a Replicate stream: what the replicator
// uses of chatpb.Replication_ReplicateServer (a test gives it a scripted
// stream).
type Stream interface {
	Send(*chatpb.ReplicaMsg) error
	Recv() (*chatpb.ReplicaAck, error)
	Context() context.Context
}

// Config is the replicator's part of the core's configuration.
type Config struct {
	Name           string        // this core, carried on every message as the primary
	AdminToken     string        // the pair token a backup's hello must carry ("" : any)
	Timeout        time.Duration // replication-timeout: a backup silent this long is given up
	ConfirmTimeout time.Duration // bounds the fencing authority's read that confirms a newer epoch
	// NotPrimary is the error Serve returns when this core is not, or no
	// longer, primary (the core's gRPC status for it).
	NotPrimary error
}

// Metrics are the replication metrics the core registers.
type Metrics struct {
	Replicated prometheus.Counter  // events acknowledged (primary) or applied (backup)
	Lag        prometheus.Gauge    // messages sent and not yet acknowledged
	InSync     prometheus.Gauge    // 1 while a backup acknowledged its snapshot
	Batch      prometheus.Observer // messages per ReplicaBatch sent
}

// Replicator is the primary's side of replication: it serves the backup's
// Replicate stream, holds the live link, sends each event and waits for
// the backup's acknowledgement of it (SendToBackup, Copy.Wait), and reports save
// progress. It reaches the core only through Core.
type Replicator struct {
	core Core
	cfg  Config
	role *role.State // the term a stream serves; hellos are checked against its epoch
	auth Authority   // confirms a newer epoch a backup claims
	m    Metrics
	log  *slog.Logger

	mu  sync.Mutex
	cur *Link
	gen atomic.Uint64

	progressMu    sync.Mutex
	progressDirty map[Session]struct{} // saves to report to the backup
}

// NewReplicator returns the primary's replicator.
func NewReplicator(core Core, cfg Config, rs *role.State, auth Authority, m Metrics, log *slog.Logger) *Replicator {
	return &Replicator{core: core, cfg: cfg, role: rs, auth: auth, m: m, log: log, progressDirty: make(map[Session]struct{})}
}

// Link is one Replicate stream from a backup.
type Link struct {
	r      *Replicator
	name   string
	gen    uint64
	stream Stream

	mu      sync.Mutex
	queue   []*chatpb.ReplicaMsg
	waiters []waiter
	nextSeq uint64
	acked   uint64
	dead    bool
	err     error
	wake    chan struct{}
	done    chan struct{}

	inSync   atomic.Bool
	handover chan *chatpb.ReplicaAck // answers to a Handover
	batches  bool                    // the backup applies ReplicaBatch (its hello said so); immutable
	// progressBatches: the backup applies SaveProgressBatch (its hello
	// said so); immutable.
	progressBatches bool
}

type waiter struct {
	seq uint64
	ch  chan error
}

// Name is the backup's name, from its hello.
func (l *Link) Name() string { return l.name }

// InSync reports whether the backup acknowledged its snapshot.
func (l *Link) InSync() bool { return l.inSync.Load() }

// Batches reports whether the backup asked for ReplicaBatch.
func (l *Link) Batches() bool { return l.batches }

// ProgressBatches reports whether the backup asked for SaveProgressBatch.
func (l *Link) ProgressBatches() bool { return l.progressBatches }

// Done is closed when the link dies.
func (l *Link) Done() <-chan struct{} { return l.done }

// Hold queues snap, the snapshot of s, and records that this link holds s:
// its next events go to the backup. Call with s's append lock held, so
// that the snapshot is ordered with the events that follow it.
func (l *Link) Hold(s Session, snap *chatpb.SessionSnapshot) {
	l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: snap}}, false)
	s.SetLinkGen(l.gen)
}

// Snapshot queues a snapshot no session holds (a tombstone).
func (l *Link) Snapshot(snap *chatpb.SessionSnapshot) {
	l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_Snapshot{Snapshot: snap}}, false)
}

// Handover asks the backup to take the epoch over; its answer arrives on
// HandoverAnswers.
func (l *Link) Handover(epoch uint64) {
	l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_Handover{Handover: &chatpb.Handover{Epoch: epoch}}}, false)
}

// HandoverAnswers yields the backup's answer to a Handover.
func (l *Link) HandoverAnswers() <-chan *chatpb.ReplicaAck { return l.handover }

// Current returns the live link, nil if none.
func (r *Replicator) Current() *Link {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// attach makes l the live link, killing the previous one.
func (r *Replicator) attach(l *Link) {
	r.mu.Lock()
	old := r.cur
	r.cur = l
	r.m.InSync.Set(0) // until l has acknowledged its snapshot
	r.mu.Unlock()
	if old != nil {
		old.kill(errors.New("replaced by a new backup stream"))
	}
}

// DropLink kills the live link (step-down, shutdown).
func (r *Replicator) DropLink(reason string) {
	r.mu.Lock()
	l := r.cur
	r.cur = nil
	r.mu.Unlock()
	if l != nil {
		l.kill(errors.New(reason))
	}
}

// Lag is the number of messages sent to the backup and not yet acknowledged.
func (r *Replicator) Lag() uint64 {
	l := r.Current()
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nextSeq - l.acked
}

// send queues msg; with wait it returns a channel that yields nil once the
// backup acknowledged msg, or ErrLinkLost.
func (l *Link) send(msg *chatpb.ReplicaMsg, wait bool) <-chan error {
	var ch chan error
	if wait {
		ch = make(chan error, 1)
	}
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		if ch != nil {
			ch <- ErrLinkLost
		}
		return ch
	}
	l.nextSeq++
	msg.Seq = l.nextSeq
	l.queue = append(l.queue, msg)
	if wait {
		l.waiters = append(l.waiters, waiter{seq: msg.Seq, ch: ch})
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return ch
}

// alive reports whether the link still takes messages.
func (l *Link) alive() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.dead
}

// ack records the backup's cumulative ack.
func (l *Link) ack(seq uint64) {
	l.mu.Lock()
	if seq > l.acked {
		l.acked = seq
	}
	n := 0
	for n < len(l.waiters) && l.waiters[n].seq <= l.acked {
		l.waiters[n].ch <- nil
		n++
	}
	l.waiters = l.waiters[n:]
	lag := l.nextSeq - l.acked
	l.mu.Unlock()
	l.r.m.Replicated.Add(float64(n))
	l.r.m.Lag.Set(float64(lag))
}

// kill ends the link: every waiter fails and the replicator forgets it.
func (l *Link) kill(err error) {
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		return
	}
	l.dead = true
	l.err = err
	for _, w := range l.waiters {
		w.ch <- ErrLinkLost
	}
	l.waiters = nil
	l.queue = nil
	l.mu.Unlock()
	close(l.done)
	r := l.r
	r.mu.Lock()
	if r.cur == l {
		r.cur = nil
	}
	if r.cur == nil || !r.cur.inSync.Load() {
		r.m.InSync.Set(0)
	}
	r.mu.Unlock()
	r.m.Lag.Set(0)
	r.log.Warn("backup link lost: second copies go to UCS until it resyncs", "backup", l.name, "err", err)
}

// sender writes queued messages to the stream, and a heartbeat when idle.
func (l *Link) sender(epoch uint64, primary string, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	idle := true
	var spare []*chatpb.ReplicaMsg // the drained queue, reused as the next one
	for {
		select {
		case <-l.done:
			return
		case <-l.wake:
		case <-t.C:
			if idle {
				if err := l.stream.Send(&chatpb.ReplicaMsg{Epoch: epoch, Primary: primary, Body: &chatpb.ReplicaMsg_Heartbeat{Heartbeat: true}}); err != nil {
					l.kill(fmt.Errorf("send heartbeat: %w", err))
					return
				}
			}
			idle = true
			continue
		}
		for {
			l.mu.Lock()
			queued := l.queue
			l.queue = spare[:0]
			l.mu.Unlock()
			if len(queued) == 0 {
				spare = queued
				break
			}
			idle = false
			if err := l.write(queued, epoch, primary); err != nil {
				l.kill(err)
				return
			}
			clear(queued) // let the events go; the slice is reused
			spare = queued
		}
	}
}

// Limits of one ReplicaBatch: a batch stays far below gRPC's default 4 MiB
// receive limit, and a long queue goes out as several messages, so that the
// backup starts applying (and acknowledging) before all of it arrived.
//
// The count is small on purpose. With batches as large as the number of
// concurrent senders, the pair falls into a convoy: one batch in flight,
// every sender waiting for its ack, all of them resubmitting at once into
// the next batch, the primary idle while the backup applies and the other
// way round. Several smaller batches in flight keep both cores busy:
// BenchmarkAppendReplicated (128 senders) measured 32 faster than 8, 16, 64
// and 512 (hashicorp/raft's MaxAppendEntries is 64 for the same reason).
const (
	maxBatchMsgs  = 32
	maxBatchBytes = 1 << 20
)

// batchable reports whether m may travel inside a ReplicaBatch.
func batchable(m *chatpb.ReplicaMsg) bool {
	switch m.Body.(type) {
	case *chatpb.ReplicaMsg_Event, *chatpb.ReplicaMsg_Saved, *chatpb.ReplicaMsg_SavedBatch:
		return true
	}
	return false
}

// approxSize bounds the encoded size of a batchable message from above
// without encoding it (gRPC sizes the batch once when it marshals it).
func approxSize(m *chatpb.ReplicaMsg) int {
	const overhead = 256 // numbers, kinds, tags, participant ids and names
	if b := m.GetSavedBatch(); b != nil {
		return overhead + progressSize*len(b.Progress)
	}
	ev := m.GetEvent()
	if ev == nil {
		return overhead // save progress
	}
	n := overhead + len(ev.SessionId) + len(ev.Text) + len(ev.ClientMessageId) + len(ev.ClientRequestId) +
		len(ev.KeyHash) + len(ev.SecureKey) + len(ev.From.GetNickname()) + len(ev.From.GetId())
	for k, v := range ev.Attrs {
		n += len(k) + len(v) + 16
	}
	return n
}

// write sends queued messages in order: runs of committed events and save
// progress as one ReplicaBatch each (group commit: the backup acknowledges
// the batch's last seq once), anything else alone. A backup that did not
// ask for batches gets every message alone.
func (l *Link) write(queued []*chatpb.ReplicaMsg, epoch uint64, primary string) error {
	one := func(m *chatpb.ReplicaMsg) error {
		m.Epoch, m.Primary = epoch, primary
		if err := l.stream.Send(m); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return nil
	}
	if !l.batches {
		for _, m := range queued {
			if err := one(m); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < len(queued); {
		if !batchable(queued[i]) {
			if err := one(queued[i]); err != nil {
				return err
			}
			i++
			continue
		}
		j, size := i, 0
		for j < len(queued) && j-i < maxBatchMsgs && size < maxBatchBytes && batchable(queued[j]) {
			size += approxSize(queued[j])
			j++
		}
		if j-i == 1 {
			if err := one(queued[i]); err != nil {
				return err
			}
			i = j
			continue
		}
		last := queued[j-1]
		b := &chatpb.ReplicaMsg{Seq: last.Seq, Epoch: epoch, Primary: primary,
			Body: &chatpb.ReplicaMsg_Batch{Batch: &chatpb.ReplicaBatch{Msgs: queued[i:j]}}}
		if err := l.stream.Send(b); err != nil {
			return fmt.Errorf("send batch of %d: %w", j-i, err)
		}
		l.r.m.Batch.Observe(float64(j - i))
		i = j
	}
	return nil
}

// tokenMatches compares a presented pair token with the configured one in
// constant time (SHA-256 of both sides); an empty configured token matches
// nothing.
func tokenMatches(presented, want string) bool {
	p, w := sha256.Sum256([]byte(presented)), sha256.Sum256([]byte(want))
	return want != "" && subtle.ConstantTimeCompare(p[:], w[:]) == 1
}

// Serve runs one backup's Replicate stream: hello, snapshot, live tail,
// acks, until the stream, the link or the primary's term ends. Only the
// primary accepts; a backup that knows a newer epoch (confirmed by the
// fencing authority) makes the core step down.
func (r *Replicator) Serve(stream Stream) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.Name == "" {
		return status.Error(codes.InvalidArgument, "first replication message must carry hello with a name")
	}
	// The pair token (admin-token) is checked before anything else, so a
	// stream without it changes nothing: no step-down, no link replaced.
	if r.cfg.AdminToken != "" && !tokenMatches(hello.Token, r.cfg.AdminToken) {
		r.log.Warn("refused a replication stream: wrong pair token", "backup", hello.Name)
		return status.Error(codes.PermissionDenied, "wrong pair token")
	}
	if hello.Epoch > r.role.Epoch() {
		// A backup's word is a hint; only the fencing authority can say
		// that a newer epoch exists.
		mine := r.role.Epoch()
		uctx, cancel := context.WithTimeout(stream.Context(), r.cfg.ConfirmTimeout)
		cur, err := r.auth.CurrentEpoch(uctx)
		cancel()
		switch {
		case err != nil:
			r.log.Warn("refused a backup claiming a newer epoch: the fencing authority cannot confirm it now", "backup", hello.Name,
				"claimed", hello.Epoch, "mine", mine, "err", err)
			return status.Errorf(codes.Unavailable, "cannot confirm epoch %d at the fencing authority: retry", hello.Epoch)
		case cur > mine:
			r.core.StepDown(fmt.Sprintf("backup %s knows newer epoch %d (the fencing authority holds %d)", hello.Name, hello.Epoch, cur), cur)
			return status.Errorf(codes.FailedPrecondition, "epoch %d is newer than mine", cur)
		default:
			r.log.Warn("refused a backup claiming an epoch the fencing authority does not know", "backup", hello.Name,
				"claimed", hello.Epoch, "ucs_epoch", cur, "mine", mine)
			return status.Errorf(codes.FailedPrecondition, "epoch %d is not known at the fencing authority (it holds %d)", hello.Epoch, cur)
		}
	}
	term := r.role.Term()
	epoch, primary, roleCtx := term.Epoch, term.Primary, term.Stream
	if !primary {
		return r.cfg.NotPrimary
	}
	l := &Link{r: r, name: hello.Name, gen: r.gen.Add(1), stream: stream, batches: hello.Batches, progressBatches: hello.ProgressBatches,
		wake: make(chan struct{}, 1), done: make(chan struct{}), handover: make(chan *chatpb.ReplicaAck, 1)}
	r.attach(l)
	defer l.kill(errors.New("stream ended"))
	go l.sender(epoch, r.cfg.Name, r.cfg.Timeout/5)

	recvErr := make(chan error, 1)
	go func() {
		for {
			a, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			l.ack(a.Seq)
			if a.HandoverEpoch != 0 || a.HandoverError != "" {
				select {
				case l.handover <- a:
				default:
				}
			}
		}
	}()
	start := time.Now()
	r.log.Info("backup connected: sending snapshot", "backup", hello.Name, "backup_epoch", hello.Epoch)
	n := r.core.SnapshotTo(l)
	select {
	case err := <-l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_SnapshotDone{SnapshotDone: true}}, true):
		if err != nil {
			return status.Error(codes.Unavailable, "backup lost during snapshot")
		}
	case <-time.After(30 * time.Second):
		return status.Error(codes.DeadlineExceeded, "backup did not acknowledge the snapshot")
	}
	l.inSync.Store(true)
	r.mu.Lock() // kill clears the gauge under the same lock
	if r.cur == l {
		r.m.InSync.Set(1)
	}
	r.mu.Unlock()
	r.log.Info("backup in sync: replication is synchronous again", "backup", hello.Name, "sessions", n, "took", time.Since(start))
	r.core.BackupInSync()

	select {
	case err := <-recvErr:
		l.kill(fmt.Errorf("receive: %w", err))
		return nil
	case <-l.done:
		return status.Error(codes.Unavailable, "replication link closed")
	case <-roleCtx.Done():
		return r.cfg.NotPrimary
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
}

// Copy is the backup's part of one event's second copy (SendToBackup): the
// event queued to the live backup, and its acknowledgement to wait for.
type Copy struct {
	// Uncertain: the event was queued to the backup with needCopy; until
	// Wait reports its ack, the backup may have applied it or not.
	Uncertain bool
	// Resyncing: the event was queued to a backup that has not
	// acknowledged its snapshot yet, so its ack waits behind the rest of
	// the snapshot; the caller may take the second copy elsewhere
	// meanwhile (the core's UCS copy) instead of waiting.
	Resyncing bool

	link     *Link
	ch       <-chan error  // the backup's answer (nil: nothing to wait for)
	timeout  time.Duration // replication-timeout
	answered bool          // ok is final
	ok       bool
}

// SendToBackup queues ev to the live backup when the backup holds its
// session (a new session's whole log is ev), without waiting: Copy.Wait
// waits for the backup's acknowledgement when needCopy. The Copy is a
// value: a send on the write path allocates nothing for it. Call with the
// session's append lock held.
func (r *Replicator) SendToBackup(s Session, ev *chatpb.Event, needCopy bool) Copy {
	l := r.Current()
	if l == nil {
		return Copy{answered: true}
	}
	if ev.Index == 1 {
		s.SetLinkGen(l.gen) // a new session: its whole log is this event
	}
	if s.LinkGen() != l.gen {
		return Copy{answered: true}
	}
	cp := Copy{link: l, timeout: r.cfg.Timeout}
	cp.Uncertain = needCopy && l.alive() // queued: the backup may apply it whatever follows
	cp.Resyncing = needCopy && !l.InSync()
	cp.ch = l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_Event{Event: ev}}, needCopy)
	if !needCopy {
		cp.answered, cp.ok = true, true // sent: nothing more is needed
	}
	return cp
}

// Wait reports whether nothing more is needed of the copy: the backup
// acknowledged the event (or it went without needCopy). It waits at most
// replication-timeout (a silent backup is given up: its link is killed and
// it resyncs from a fresh snapshot), or until stop is closed: then it
// returns false and a later Wait may still see the ack. The caller's
// context is not honoured: once sent, the event's fate must be decided
// (committed or not) before the index moves on.
func (c *Copy) Wait(stop <-chan struct{}) bool {
	if c.answered {
		return c.ok
	}
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case err := <-c.ch:
		c.answered, c.ok = true, err == nil
	case <-t.C:
		c.link.kill(fmt.Errorf("no ack within %s", c.timeout))
		c.answered = true
	case <-stop:
	}
	return c.ok
}

// Progress tells the backup about an acknowledged transcript save: at once
// when now is set, else batched by FlushProgress (saves are idempotent, so
// progress the backup misses only costs a re-save after a failover).
func (r *Replicator) Progress(s Session, now bool) {
	if !now {
		r.progressMu.Lock()
		r.progressDirty[s] = struct{}{}
		r.progressMu.Unlock()
		return
	}
	l := r.Current()
	if l == nil || s.LinkGen() != l.gen {
		return
	}
	l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_Saved{Saved: s.SaveProgress()}}, false)
}

// progressEvery is how often batched save progress goes to the backup.
const progressEvery = 50 * time.Millisecond

// Limits of one SaveProgressBatch: progressSize bounds one entry's encoded
// size from above (a session id and three numbers), and maxProgressPerMsg
// keeps a message far below gRPC's 4 MiB receive limit.
const (
	progressSize      = 128
	maxProgressPerMsg = 4096
)

// FlushProgress sends batched save progress until ctx is done.
func (r *Replicator) FlushProgress(ctx context.Context) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.flushProgress()
	}
}

// flushProgress sends the save progress gathered since the last flush: to
// a backup that asked for progress batches as SaveProgressBatch messages
// (one seq each, for up to maxProgressPerMsg sessions), to an older one as
// one SaveProgress per session. Sessions the current link does not hold
// are skipped (its snapshot carried their progress).
func (r *Replicator) flushProgress() {
	r.progressMu.Lock()
	dirty := r.progressDirty
	if len(dirty) == 0 {
		r.progressMu.Unlock()
		return
	}
	r.progressDirty = make(map[Session]struct{}, len(dirty))
	r.progressMu.Unlock()
	l := r.Current()
	if l == nil {
		return
	}
	if !l.progressBatches {
		for s := range dirty {
			r.Progress(s, true)
		}
		return
	}
	var batch []*chatpb.SaveProgress
	flush := func() {
		if len(batch) > 0 {
			l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_SavedBatch{SavedBatch: &chatpb.SaveProgressBatch{Progress: batch}}}, false)
			batch = nil
		}
	}
	for s := range dirty {
		if s.LinkGen() != l.gen {
			continue
		}
		batch = append(batch, s.SaveProgress())
		if len(batch) == maxProgressPerMsg {
			flush()
		}
	}
	flush()
}
