package chatcore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// This file is restoration: what a new primary does with the sessions it
// holds (the replica, merged with what UCS holds beyond it) and with the
// sessions only UCS holds (rebuilt on their first call, lookup).

// restorer rebuilds sessions after a promotion or a switchover (all) and
// from UCS on a primary's first call about a session it lacks (fromUCS).
// It owns the set of sessions being rebuilt from UCS (its lock, a leaf)
// and reaches the core through c (the session table, append, the saver).
type restorer struct {
	c *Core

	mu   sync.Mutex
	busy map[string]chan struct{} // session ids being rebuilt from UCS
}

func newRestorer(c *Core) *restorer {
	return &restorer{c: c, busy: make(map[string]chan struct{})}
}

// all restores every session this new primary holds, per
// session-restoration-mode, and resumes pending transcript saves. It
// returns the number of live sessions handled.
func (r *restorer) all(ctx context.Context, source string) int {
	c := r.c
	ctx, span := c.tracer.Start(ctx, "chatcore.restore")
	defer span.End()
	start := time.Now()
	stale := c.replicaStale.Load()
	if stale {
		source += "+ucs"
	}
	all := c.all()
	// What UCS holds beyond the replica: second copies the old primary took
	// after our stream stopped (a partition, a silent primary). One listing
	// call; without it a stale replica merges every session.
	var stored map[string]ChatInfo
	merged := false
	if c.role.Unmerged() {
		// Not serving yet: merge everything UCS holds beyond the replica,
		// however long UCS takes, then open to clients.
		var err error
		if stored, err = r.catchUp(ctx, all); err != nil {
			c.log.WarnContext(ctx, "restoration stopped before the merge completed", "err", err)
			return 0
		}
		merged = true
		c.finishRestoring()
		c.log.InfoContext(ctx, "merged what UCS holds beyond the replica: serving", "sessions", len(all), "took", time.Since(start))
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
		if !info.Ended && c.session(id) == nil && !c.tombs.has(id) {
			if _, err := c.lookup(ctx, id, nil); err == nil {
				n++
			} else {
				c.log.WarnContext(ctx, "could not restore session from UCS", "session", id, "err", err)
			}
		}
	}
	c.replicaStale.Store(false)
	span.SetAttributes(attribute.Int("sessions", n), attribute.String("source", source))
	c.log.InfoContext(ctx, "restoration done", "mode", c.cfg.SessionRestorationMode, "sessions", n, "source", source, "took", time.Since(start))
	return n
}

// errNoLister reports a store that cannot list chats (every session is then
// read on its own).
var errNoLister = errors.New("store cannot list chats")

// storedChats lists the cluster's chats at UCS (one call instead of a read
// per session). It returns nil and an error when the store cannot list them.
func (r *restorer) storedChats(ctx context.Context) (map[string]ChatInfo, error) {
	c := r.c
	l, ok := c.store.(ChatLister)
	if !ok {
		return nil, errNoLister
	}
	list, err := l.Chats(ctx, ChatFilter{Service: c.cfg.Cluster})
	if err != nil {
		c.log.WarnContext(ctx, "could not list chats at UCS: merging every session", "err", err)
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
	c := r.c
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
		c.log.WarnContext(ctx, "could not merge every session from UCS: not serving yet, retrying", "failed", len(failed), "retry_in", delay)
		pending = failed
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("catch up from ucs: %w", ctx.Err())
		case <-time.After(delay):
		}
		if !c.role.IsPrimary() {
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
	c := r.c
	if _, atUCS := c.fencer.(StoreFencer); atUCS {
		return nil
	}
	mine := c.role.Epoch()
	delay := 50 * time.Millisecond
	for {
		cur, err := c.store.Epoch(ctx, c.cfg.Cluster)
		if err == nil {
			switch {
			case cur.Epoch == mine:
				return nil
			case cur.Epoch > mine:
				c.stepDown(fmt.Sprintf("UCS holds epoch %d, newer than mine", cur.Epoch), cur.Epoch)
				return fmt.Errorf("announce epoch %d: %w", mine, ErrStaleEpoch)
			}
			_, err = c.store.ClaimEpoch(ctx, c.cfg.Cluster, cur.Epoch, mine, c.cfg.Name)
			if err == nil || errors.Is(err, ErrEpochConflict) {
				continue // read again: done, or someone moved first
			}
		}
		c.log.WarnContext(ctx, "could not tell UCS the new epoch before the merge: retrying", "epoch", mine, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("announce epoch %d: %w", mine, ctx.Err())
		case <-time.After(delay):
		}
		if !c.role.IsPrimary() {
			return errors.New("announce epoch: stepped down")
		}
		delay = min(delay*2, time.Second)
	}
}

// one restores one replicated session.
func (r *restorer) one(ctx context.Context, s *session, source string, stale bool, stored map[string]ChatInfo) bool {
	c := r.c
	if behind(s, stale, stored) {
		if err := r.mergeFromUCS(ctx, s); err != nil {
			c.log.WarnContext(ctx, "could not merge session from UCS", "session", s.id, "err", err)
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
		c.log.InfoContext(ctx, "session restored", "session", s.id, "source", source, "events", n, "mode", c.cfg.SessionRestorationMode)
		c.m.restored.WithLabelValues(source).Inc()
	}
	c.saver.Enqueue(s) // pending saves resume behind this core's breaker
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
	c := r.c
	if c.cfg.SessionRestorationMode == RestorationNone {
		if err := c.endSessionWith(ctx, s, reason, false); err != nil {
			c.log.WarnContext(ctx, "could not end session after failover", "session", s.id, "err", err)
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
	c.log.WarnContext(ctx, "failover notices wait for a second copy", "session", s.id, "notices", len(rest), "err", err)
	c.bg.spawn(func(ctx context.Context) {
		delay := 50 * time.Millisecond
		deadline := time.Now().Add(time.Minute)
		for len(rest) > 0 && time.Now().Before(deadline) && c.role.IsPrimary() {
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
			c.log.WarnContext(ctx, "failover notices given up", "session", s.id, "notices", len(rest))
		}
	})
}

// appendNotices appends the notices in order and returns those not
// appended: all from the first that failed (with its error).
func (r *restorer) appendNotices(ctx context.Context, s *session, notices []*chatpb.Event) ([]*chatpb.Event, error) {
	c := r.c
	for i, ev := range notices {
		_, _, err := c.appendWith(ctx, s, false, func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
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
	c := r.c
	tr, err := c.store.Transcript(ctx, s.id)
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
		c.commitLocked(s, ev)
		merged++
	}
	if merged > 0 {
		c.log.InfoContext(ctx, "session caught up from UCS", "session", s.id, "events", merged)
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
	c := r.c
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
	p, foreign := c.adopted.foreignPair(id)
	if s := c.session(id); s != nil { // restored while we registered
		return s, nil, nil
	}
	ctx, span := c.tracer.Start(ctx, "chatcore.restoreFromUCS")
	defer span.End()
	tr, err := c.store.Transcript(ctx, id)
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
		s.adopted.Store(c.adopted.saveOf(p))
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
		s.endedAt = c.now()
	}
	c.putSession(s)
	c.log.InfoContext(ctx, "session restored", "session", id, "source", "ucs", "events", len(evs), "ended", s.log.State.Ended, "mode", c.cfg.SessionRestorationMode)
	c.m.restored.WithLabelValues("ucs").Inc()
	if foreign {
		r.toBackup(s) // its next events' second copy: the backup's ack
		c.adopted.restored.WithLabelValues(p).Inc()
		c.log.InfoContext(ctx, "session of an adopted pair restored", "pair", p, "session", id, "ended", s.log.State.Ended)
	}
	if !s.log.State.Ended {
		r.announceFailover(ctx, s, noticeReason("ucs"))
	}
	return s, nil, nil
}

// toBackup sends a session this primary just restored from UCS to
// its in-sync backup (as the link's opening snapshot does), so that its
// next events get their second copy from the backup. Without a backup in
// sync the session's second copies go to UCS until the backup resyncs.
func (r *restorer) toBackup(s *session) {
	l := r.c.repl.Current()
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
