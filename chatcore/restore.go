package chatcore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/saver"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// This file is restoration: what a new primary does with the sessions it
// holds (the replica, merged with what UCS holds beyond it) and with the
// sessions only UCS holds (rebuilt on their first call, lookup).

// restorerCore is the core as restoration sees it (restorerHost is the
// real one; restore_test.go has a fake). The restorer calls every method
// with no lock of its own or of a session held, except commitLocked; the
// locks each method takes, in doc.go's order:
type restorerCore interface {
	// all returns every session of the table; session one of them, nil
	// when the table does not hold it (Core.mu, shared).
	all() []*session
	session(id string) *session
	// putSession takes a rebuilt session into the table (Core.mu, then the
	// replaced session's mu and s.mu, one at a time, then Core.mu again
	// and the janitor's heap).
	putSession(s *session)
	// appendUncopied appends what prepare returns through the core's one
	// write path without waiting for its second copy (failover notices: no
	// client waits for them); it still streams to an attached backup, in
	// order (Core.inflight shared -> s.appendMu -> s.mu -> Core.mu, as an
	// append does).
	appendUncopied(ctx context.Context, s *session, prepare prepareFunc) error
	// commitLocked folds ev, which UCS holds, into s and fans it out. Call
	// with s.appendMu and s.mu held; it takes Core.mu and the janitor's
	// heap, both under s.mu.
	commitLocked(s *session, ev *chatpb.Event)
	// toBackup sends s, just rebuilt from UCS, to the backup in sync so
	// that its next events get their second copy there (s.appendMu ->
	// s.mu, then package replica's link lock under s.appendMu).
	toBackup(s *session)
	// replicaStale reports whether the replica may miss events the old
	// primary acknowledged while the stream was down; replicaMerged says it
	// no longer does (an atomic, no lock).
	replicaStale() bool
	replicaMerged()
	// finishRestoring opens this restoring primary to clients; stepDown
	// makes it a backup (role.State's lock; its effects take health,
	// background and the replicator's locks, leaves).
	finishRestoring()
	stepDown(reason string, newer uint64)
}

// restoreStore is the part of TranscriptStore restoration reads: the
// transcripts, and the epoch it tells UCS before a merge. A store that is
// also a ChatLister is listed in one call instead of read per session.
type restoreStore interface {
	Transcript(ctx context.Context, chatID string) (*Transcript, error)
	Epoch(ctx context.Context, service string) (Epoch, error)
	ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error)
}

// saveQueue is where a restored session's pending saves resume (the
// saver's queue, behind this core's breaker; its lock is a leaf).
type saveQueue interface {
	Enqueue(s saver.Session)
}

// restorer rebuilds sessions after a promotion or a switchover (all) and
// from UCS on a primary's first call about a session it lacks (lookup,
// fromUCS). It owns the set of sessions being rebuilt from UCS (mu, a
// leaf: never held while calling anything else) and reaches the core only
// through restorerCore.
type restorer struct {
	core    restorerCore
	store   restoreStore
	saves   saveQueue
	role    *role.State
	tombs   *tombstones                          // sessions never restored from UCS (doubt.go)
	adopted *adoptions                           // the other pairs adopted here: where their sessions save (adopt.go)
	spawn   func(func(ctx context.Context)) bool // background work Serve owns

	cluster, name string // this pair's epoch service, this core
	mode          string // session-restoration-mode
	epochsAtUCS   bool   // the fencer is UCS itself: nothing to announce before a merge

	restored *prometheus.CounterVec // hachat_core_restored_sessions_total{source}
	log      *slog.Logger
	tracer   trace.Tracer
	now      func() time.Time

	mu   sync.Mutex
	busy map[string]chan struct{} // session ids being rebuilt from UCS
}

// newRestorer builds the core's restorer over its store, saver, role,
// tombstones, adoptions, configuration and metrics; it reaches the rest of
// the core through restorerHost.
func newRestorer(c *Core) *restorer {
	_, atUCS := c.fencer.(StoreFencer)
	return &restorer{core: restorerHost{c}, store: c.store, saves: c.saver, role: c.role, tombs: &c.tombs, adopted: c.adopted, spawn: c.bg.spawn,
		cluster: c.cfg.Cluster, name: c.cfg.Name, mode: c.cfg.SessionRestorationMode, epochsAtUCS: atUCS,
		restored: c.m.restored, log: c.log, tracer: c.tracer, now: c.now, busy: make(map[string]chan struct{})}
}

// all restores every session this new primary holds, per
// session-restoration-mode, and resumes pending transcript saves. It
// returns the number of live sessions handled.
func (r *restorer) all(ctx context.Context, source string) int {
	ctx, span := r.tracer.Start(ctx, "chatcore.restore")
	defer span.End()
	start := time.Now()
	stale := r.core.replicaStale()
	if stale {
		source += "+ucs"
	}
	all := r.core.all()
	// What UCS holds beyond the replica: second copies the old primary took
	// after our stream stopped (a partition, a silent primary). One listing
	// call; without it a stale replica merges every session.
	var stored map[string]ChatInfo
	merged := false
	if r.role.Unmerged() {
		// Not serving yet: merge everything UCS holds beyond the replica,
		// however long UCS takes, then open to clients.
		var err error
		if stored, err = r.catchUp(ctx, all); err != nil {
			r.log.WarnContext(ctx, "restoration stopped before the merge completed", "err", err)
			return 0
		}
		merged = true
		r.core.finishRestoring()
		r.log.InfoContext(ctx, "merged what UCS holds beyond the replica: serving", "sessions", len(all), "took", time.Since(start))
	} else {
		stored, _ = r.storedChats(ctx)
	}
	work := make(chan *session)
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for range 8 {
		wg.Go(func() {
			for s := range work {
				if r.one(ctx, s, source, stale && !merged, stored) {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}
		})
	}
	for _, s := range all {
		work <- s
	}
	close(work)
	wg.Wait()
	// Sessions that only UCS holds (started while the replica was cut off).
	for id, info := range stored {
		if !info.Ended && r.core.session(id) == nil && !r.tombs.has(id) {
			if _, err := r.lookup(ctx, id, nil); err == nil {
				n++
			} else {
				r.log.WarnContext(ctx, "could not restore session from UCS", "session", id, "err", err)
			}
		}
	}
	r.core.replicaMerged()
	span.SetAttributes(attribute.Int("sessions", n), attribute.String("source", source))
	r.log.InfoContext(ctx, "restoration done", "mode", r.mode, "sessions", n, "source", source, "took", time.Since(start))
	return n
}

// errNoLister reports a store that cannot list chats (every session is then
// read on its own).
var errNoLister = errors.New("store cannot list chats")

// storedChats lists the cluster's chats at UCS (one call instead of a read
// per session). It returns nil and an error when the store cannot list them.
func (r *restorer) storedChats(ctx context.Context) (map[string]ChatInfo, error) {
	l, ok := r.store.(ChatLister)
	if !ok {
		return nil, errNoLister
	}
	list, err := l.Chats(ctx, ChatFilter{Service: r.cluster})
	if err != nil {
		r.log.WarnContext(ctx, "could not list chats at UCS: merging every session", "err", err)
		return nil, fmt.Errorf("list chats at ucs: %w", err)
	}
	out := make(map[string]ChatInfo, len(list))
	for _, ci := range list {
		out[ci.ChatID] = ci
	}
	return out, nil
}

// behind reports whether UCS may hold events of s beyond its log: stored
// says so, or stored is unknown (nil) and the replica is stale.
func behind(s *session, stale bool, stored map[string]ChatInfo) bool {
	s.mu.Lock()
	last, ended := s.lastIndex(), s.log.State.Ended
	s.mu.Unlock()
	info, known := stored[s.id]
	return stored == nil && stale || known && (info.HighestIndex > last || info.Ended && !ended)
}

// catchUp merges into every session of all what UCS holds beyond it (the
// old primary's second copies), retrying what fails until every merge
// succeeded: a new primary with a stale replica must not assign an index
// the old primary may have acknowledged. It returns the listing it used
// (nil when the store cannot list), or an error when ctx ends or this core
// stops being primary first.
func (r *restorer) catchUp(ctx context.Context, all []*session) (map[string]ChatInfo, error) {
	delay := 50 * time.Millisecond
	pending := all
	if err := r.announceEpoch(ctx); err != nil {
		return nil, err
	}
	for {
		stored, lerr := r.storedChats(ctx)
		if lerr != nil && !errors.Is(lerr, errNoLister) {
			stored = nil // read every pending session on its own
		}
		var failed []*session
		for _, s := range pending {
			if !behind(s, true, stored) {
				continue
			}
			if err := r.mergeFromUCS(ctx, s); err != nil {
				failed = append(failed, s)
			}
		}
		if len(failed) == 0 {
			// Without a listing every session was read on its own; sessions
			// only UCS holds are rebuilt on their first call (lookup).
			return stored, nil
		}
		r.log.WarnContext(ctx, "could not merge every session from UCS: not serving yet, retrying", "failed", len(failed), "retry_in", delay)
		pending = failed
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("catch up from ucs: %w", ctx.Err())
		case <-time.After(delay):
		}
		if !r.role.IsPrimary() {
			return nil, errors.New("catch up from ucs: stepped down")
		}
		delay = min(delay*2, time.Second)
	}
}

// announceEpoch makes UCS hold this primary's epoch before it merges what
// UCS holds, when the epochs come from elsewhere (etcd): UCS otherwise
// learns an epoch only from the first save that carries it, and an old
// primary that does not know it is fenced could still add a second copy
// after the merge read past it. It retries until UCS answers, and fails
// when UCS already holds a newer epoch (this core is fenced) or ctx ends.
func (r *restorer) announceEpoch(ctx context.Context) error {
	if r.epochsAtUCS {
		return nil
	}
	mine := r.role.Epoch()
	delay := 50 * time.Millisecond
	for {
		cur, err := r.store.Epoch(ctx, r.cluster)
		if err == nil {
			switch {
			case cur.Epoch == mine:
				return nil
			case cur.Epoch > mine:
				r.core.stepDown(fmt.Sprintf("UCS holds epoch %d, newer than mine", cur.Epoch), cur.Epoch)
				return fmt.Errorf("announce epoch %d: %w", mine, ErrStaleEpoch)
			}
			_, err = r.store.ClaimEpoch(ctx, r.cluster, cur.Epoch, mine, r.name)
			if err == nil || errors.Is(err, ErrEpochConflict) {
				continue // read again: done, or someone moved first
			}
		}
		r.log.WarnContext(ctx, "could not tell UCS the new epoch before the merge: retrying", "epoch", mine, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("announce epoch %d: %w", mine, ctx.Err())
		case <-time.After(delay):
		}
		if !r.role.IsPrimary() {
			return errors.New("announce epoch: stepped down")
		}
		delay = min(delay*2, time.Second)
	}
}

// one restores one replicated session.
func (r *restorer) one(ctx context.Context, s *session, source string, stale bool, stored map[string]ChatInfo) bool {
	if behind(s, stale, stored) {
		if err := r.mergeFromUCS(ctx, s); err != nil {
			r.log.WarnContext(ctx, "could not merge session from UCS", "session", s.id, "err", err)
		}
	}
	s.mu.Lock()
	ended, removed, n := s.log.State.Ended, s.removed, s.log.LastIndex()
	s.mu.Unlock()
	if removed {
		return false
	}
	if !ended {
		r.announceFailover(ctx, s, noticeReason(source))
		r.log.InfoContext(ctx, "session restored", "session", s.id, "source", source, "events", n, "mode", r.mode)
		r.restored.WithLabelValues(source).Inc()
	}
	r.saves.Enqueue(s) // pending saves resume behind this core's breaker
	return !ended
}

// noticeReason is the "reason" attribute of the notices a restore appends:
// "switchover" after a planned handover, "failover" otherwise.
func noticeReason(source string) string {
	if source == "switchover" {
		return "switchover"
	}
	return "failover"
}

// announceFailover appends, per session-restoration-mode, the disconnected
// and reconnected notices of every present participant (simple) or the end
// of the session (none), each with the given reason.
func (r *restorer) announceFailover(ctx context.Context, s *session, reason string) {
	if r.mode == RestorationNone {
		if err := r.core.appendUncopied(ctx, s, ending(reason)); err != nil && !errors.Is(err, errEnded) {
			r.log.WarnContext(ctx, "could not end session after failover", "session", s.id, "err", err)
		}
		return
	}
	s.mu.Lock()
	present := s.log.State.Participants()
	s.mu.Unlock()
	var notices []*chatpb.Event
	for _, kind := range []chatpb.EventKind{chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED} {
		for _, p := range present {
			notices = append(notices, &chatpb.Event{Kind: kind, From: p, Visibility: p.Visibility, Attrs: map[string]string{"reason": reason}})
		}
	}
	rest, err := r.appendNotices(ctx, s, notices)
	if err == nil || status.Code(err) != codes.Unavailable {
		return
	}
	// No second copy possible right now (backup away and UCS down, or an
	// event in doubt): the notices wait, in order, until one is possible,
	// rather than being dropped.
	r.log.WarnContext(ctx, "failover notices wait for a second copy", "session", s.id, "notices", len(rest), "err", err)
	r.spawn(func(ctx context.Context) {
		delay := 50 * time.Millisecond
		deadline := time.Now().Add(time.Minute)
		for len(rest) > 0 && time.Now().Before(deadline) && r.role.IsPrimary() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, time.Second)
			if rest, err = r.appendNotices(ctx, s, rest); err != nil && status.Code(err) != codes.Unavailable {
				return
			}
		}
		if len(rest) > 0 {
			r.log.WarnContext(ctx, "failover notices given up", "session", s.id, "notices", len(rest))
		}
	})
}

// appendNotices appends the notices in order and returns those not
// appended: all from the first that failed (with its error).
func (r *restorer) appendNotices(ctx context.Context, s *session, notices []*chatpb.Event) ([]*chatpb.Event, error) {
	for i, ev := range notices {
		err := r.core.appendUncopied(ctx, s, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
			if st.Ended {
				return nil, 0, errEnded
			}
			return proto.Clone(ev).(*chatpb.Event), 0, nil
		})
		if err != nil {
			return notices[i:], err
		}
	}
	return nil, nil
}

// mergeFromUCS appends the events UCS holds beyond the local log (second
// copies taken while the backup was away).
func (r *restorer) mergeFromUCS(ctx context.Context, s *session) error {
	tr, err := r.store.Transcript(ctx, s.id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	merged := 0
	for _, ev := range withPlaceholders(s.id, tr.Events, s.lastIndex()) {
		r.core.commitLocked(s, ev)
		merged++
	}
	if merged > 0 {
		r.log.InfoContext(ctx, "session caught up from UCS", "session", s.id, "events", merged)
	}
	return nil
}

// withPlaceholders returns the events of stored with index > after, in order,
// with a placeholder notice (visibility MONITOR: never shown to the customer)
// for each index UCS does not hold (a notice transcript-save-notices left out).
func withPlaceholders(sessionID string, stored []*chatpb.Event, after uint64) []*chatpb.Event {
	sort.Slice(stored, func(i, j int) bool { return stored[i].Index < stored[j].Index })
	var out []*chatpb.Event
	next := after + 1
	for _, ev := range stored {
		if ev.Index < next {
			continue
		}
		for ; next < ev.Index; next++ {
			out = append(out, &chatpb.Event{SessionId: sessionID, Index: next, Kind: chatpb.EventKind_EVENT_KIND_NOTICE,
				From: systemParticipant, Visibility: chatpb.Visibility_VISIBILITY_MONITOR, Epoch: ev.Epoch, UtcUnixMs: ev.UtcUnixMs,
				Attrs: map[string]string{"noticeType": "omitted"}})
		}
		out = append(out, ev)
		next++
	}
	return out
}

// fromUCS rebuilds session id from its UCS transcript (lookup, on a
// primary that does not hold it). When another call is rebuilding it,
// fromUCS returns that call's done channel (wait, look again); else the
// session, or why not. admit, when not nil, judges the rebuilt state
// before the core takes the session in.
func (r *restorer) fromUCS(ctx context.Context, id string, admit func(st *sessionlog.State) error) (s *session, wait <-chan struct{}, err error) {
	r.mu.Lock()
	if w, busy := r.busy[id]; busy {
		r.mu.Unlock()
		return nil, w, nil
	}
	done := make(chan struct{})
	r.busy[id] = done
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.busy, id)
		r.mu.Unlock()
		close(done)
	}()
	p, foreign := r.adopted.foreignPair(id)
	if s := r.core.session(id); s != nil { // restored while we registered
		return s, nil, nil
	}
	ctx, span := r.tracer.Start(ctx, "chatcore.restoreFromUCS")
	defer span.End()
	tr, err := r.store.Transcript(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, nil, errUnknown
	case err != nil:
		return nil, nil, status.Errorf(codes.Unavailable, "session not held here and UCS failed: %v", err)
	}
	evs := withPlaceholders(id, tr.Events, 0)
	if len(evs) == 0 || evs[0].Kind != chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
		return nil, nil, errUnknown
	}
	s = newSession(id)
	s.startReq = evs[0].ClientRequestId
	if foreign {
		s.adopted.Store(r.adopted.saveOf(p))
	}
	for _, ev := range evs {
		s.log.Commit(ev)
	}
	if admit != nil {
		if err := admit(&s.log.State); err != nil {
			return nil, nil, err
		}
	}
	s.save.SavedThrough = s.lastIndex()
	s.save.FinalSaved = tr.Ended
	if s.log.State.Ended {
		s.endedAt = r.now()
	}
	r.core.putSession(s)
	r.log.InfoContext(ctx, "session restored", "session", id, "source", "ucs", "events", len(evs), "ended", s.log.State.Ended, "mode", r.mode)
	r.restored.WithLabelValues("ucs").Inc()
	if foreign {
		r.core.toBackup(s) // its next events' second copy: the backup's ack
		r.adopted.restored.WithLabelValues(p).Inc()
		r.log.InfoContext(ctx, "session of an adopted pair restored", "pair", p, "session", id, "ended", s.log.State.Ended)
	}
	if !s.log.State.Ended {
		r.announceFailover(ctx, s, noticeReason("ucs"))
	}
	return s, nil, nil
}

// lookup returns session id; on a primary that does not hold it, it
// rebuilds it from its UCS transcript (fromUCS), or waits for the call that
// is rebuilding it and looks again. A backup knows only the sessions it
// holds (errUnknown); a session ended here without a complete transcript in
// UCS (a tombstone) is never rebuilt from there (errTombstoned). admit is
// fromUCS's.
func (r *restorer) lookup(ctx context.Context, id string, admit func(st *sessionlog.State) error) (*session, error) {
	for {
		if s := r.core.session(id); s != nil {
			return s, nil
		}
		if !r.role.IsPrimary() {
			return nil, errUnknown
		}
		if r.tombs.has(id) {
			// Ended here with events UCS lacks: its copy there is older
			// than what was acknowledged, and must not reopen it.
			return nil, errTombstoned
		}
		s, wait, err := r.fromUCS(ctx, id, admit)
		if wait == nil {
			return s, err
		}
		select { // another call is rebuilding it; it may be refused, so look again
		case <-wait:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// restorerHost is the core as the restorer sees it (restorerCore).
type restorerHost struct{ c *Core }

func (h restorerHost) all() []*session            { return h.c.all() }
func (h restorerHost) session(id string) *session { return h.c.session(id) }
func (h restorerHost) putSession(s *session)      { h.c.putSession(s) }

func (h restorerHost) appendUncopied(ctx context.Context, s *session, prepare prepareFunc) error {
	_, _, err := h.c.appendWith(ctx, s, false, prepare)
	return err
}

func (h restorerHost) commitLocked(s *session, ev *chatpb.Event) { h.c.commitLocked(s, ev) }

// toBackup queues s on the link to the backup in sync, as the link's
// opening snapshot does. Without a backup in sync the session's second
// copies go to UCS until the backup resyncs.
func (h restorerHost) toBackup(s *session) {
	l := h.c.repl.Current()
	if l == nil || !l.InSync() {
		return
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return
	}
	snap := s.snapshotLocked()
	s.mu.Unlock()
	l.Hold(s, snap)
}

func (h restorerHost) replicaStale() bool                   { return h.c.replicaStale.Load() }
func (h restorerHost) replicaMerged()                       { h.c.replicaStale.Store(false) }
func (h restorerHost) finishRestoring()                     { h.c.finishRestoring() }
func (h restorerHost) stepDown(reason string, newer uint64) { h.c.stepDown(reason, newer) }
