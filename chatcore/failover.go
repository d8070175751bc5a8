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
	"github.com/hachat/hachat/chatcore/transcript"
	"github.com/hachat/hachat/membership"
)

// This file holds the role logic: start-up, promotion, restoration,
// switchover and stepping down when a newer epoch shows up.
//
// The primary is whoever holds the newest epoch at the fencing authority
// (c.fencer: the coordination cluster, etcd; or UCS when the core has none).
// Promotion claims the next epoch with a compare-and-set; if the authority
// is unreachable when the primary dies, the backup does not promote (two
// primaries would be possible without the fencing token): it keeps retrying
// the claim, clients get UNAVAILABLE (retryable), and nothing acknowledged is
// lost, because the backup holds every acknowledged event. With etcd, UCS
// being down does not stop a promotion (docs/design.md).

// roleLoop owns the core's role for the life of Serve.
func (c *Core) roleLoop(ctx context.Context) {
	if c.cfg.Role == RolePrimary {
		if peer, ok := c.peerHasState(ctx); ok {
			c.log.InfoContext(ctx, "configured primary, but the peer holds the sessions: joining as backup", "peer", peer.Name,
				"peer_role", peer.Role, "peer_epoch", peer.Epoch, "peer_sessions", peer.LiveSessions)
			c.role.Observe(peer.Epoch)
		} else if _, err := c.claimPrimary(ctx, c.startClaim()); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "could not claim the primary role at start: joining as backup", "err", err)
		}
	} else {
		c.publishMeta(ctx)
	}
	for ctx.Err() == nil {
		if c.role.IsPrimary() {
			c.lead(ctx)
		} else {
			c.follow(ctx)
		}
	}
}

// startClaim is the claim of a core configured primary at start. Paired, it
// must not take the epoch from the other core while that one's lease lives
// (gossip may not show it yet): it then joins as backup. Standalone, there
// is no other core to defer to.
func (c *Core) startClaim() claim {
	cl := claim{reason: "configured primary"}
	if c.paired() {
		cl.ifSilent = c.cfg.EpochLease
	}
	return cl
}

// storeEpoch returns the epoch a fencing error of the store names (0 when
// it names none).
func storeEpoch(err error) uint64 {
	var se *transcript.StaleEpochError
	var ce *transcript.EpochConflictError
	var fe *FenceError
	switch {
	case errors.As(err, &fe):
		return fe.Epoch
	case errors.As(err, &se):
		return se.Epoch
	case errors.As(err, &ce):
		return ce.Epoch
	}
	return 0
}

// peerHasState asks the peer for its status: a peer that is primary, or a
// backup that holds sessions, must not be overridden by a core that starts
// empty (it would replicate its emptiness over them).
func (c *Core) peerHasState(ctx context.Context) (*chatpb.StatusResponse, bool) {
	if !c.paired() {
		return nil, false
	}
	addr := c.peerAddr()
	if addr == "" && c.members != nil && c.previousHolderElsewhere(ctx) {
		// A primary existed before us: give gossip a moment to show it.
		deadline := time.Now().Add(startupPeerWait)
		for addr == "" && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			addr = c.peerAddr()
		}
	}
	if addr == "" {
		return nil, false
	}
	conn, err := c.peerConn(addr)
	if err != nil {
		return nil, false
	}
	sctx, cancel := context.WithTimeout(ctx, 3*c.cfg.ProbeTimeout+200*time.Millisecond)
	defer cancel()
	st, err := chatpb.NewChatClient(conn).Status(sctx, &chatpb.StatusRequest{})
	if err != nil {
		return nil, false
	}
	return st, st.Role == RolePrimary || st.LiveSessions > 0
}

// startupPeerWait is how long a configured primary that finds an epoch
// held before waits for gossip to show the other core before it claims.
const startupPeerWait = 2 * time.Second

// previousHolderElsewhere reports whether UCS shows an epoch held before
// (by anyone): then another core may be primary now.
func (c *Core) previousHolderElsewhere(ctx context.Context) bool {
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cur, err := c.fencer.Current(sctx, c.cfg.Cluster)
	return err != nil || cur.Holder != ""
}

// lead runs while this core is primary: it watches membership for a core
// with a newer epoch claiming primary, and returns on a role change.
func (c *Core) lead(ctx context.Context) {
	roleCh := c.role.Changed()
	if !c.role.IsPrimary() {
		return
	}
	var events <-chan membership.Event
	if c.members != nil {
		ch, cancel := c.members.Subscribe()
		defer cancel()
		events = ch
	}
	lctx, stopLease := context.WithCancel(ctx)
	defer stopLease()
	leaseDone := make(chan struct{})
	go func() { defer close(leaseDone); c.renewLease(lctx, c.role.Epoch()) }()
	defer func() { stopLease(); <-leaseDone }()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-roleCh:
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			c.checkNewerPrimary(ctx, ev.Member)
		case <-t.C:
			if c.members != nil {
				for _, m := range c.members.Members() {
					c.checkNewerPrimary(ctx, m)
				}
			}
			if c.repl.current() == nil {
				c.checkPeerPrimary(ctx)
			}
		}
	}
}

// renewLease renews this primary's lease on epoch at the fencing authority
// four times per epoch-lease until ctx ends. A store that names a newer epoch or another
// holder fences it: it steps down at once. While UCS does not answer the
// lease lapses, and a backup may then take over (the claim needs UCS too).
func (c *Core) renewLease(ctx context.Context, epoch uint64) {
	t := time.NewTicker(c.cfg.EpochLease / 4)
	defer t.Stop()
	var lastWarn time.Time
	for {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.EpochLease/2)
		_, err := c.fencer.Renew(rctx, c.cfg.Cluster, epoch, c.cfg.Name)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrEpochConflict):
			c.stepDown(fmt.Sprintf("the fencing authority refused the lease renewal of epoch %d: %v", epoch, err), storeEpoch(err))
			return
		case err != nil:
			c.m.fencingFailures.WithLabelValues("renew").Inc()
			if time.Since(lastWarn) <= 5*time.Second {
				break
			}
			lastWarn = time.Now()
			c.log.WarnContext(ctx, "could not renew the primary's lease at the fencing authority: a backup may take over once it lapses", "epoch", epoch, "lease", c.cfg.EpochLease, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkPeerPrimary asks the peer, while no backup replicates from us, whether
// it became primary at a newer epoch (we may have been frozen, or cut off):
// then we step down at once.
func (c *Core) checkPeerPrimary(ctx context.Context) {
	addr := c.peerAddr()
	if addr == "" {
		return
	}
	conn, err := c.peerConn(addr)
	if err != nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	st, err := chatpb.NewChatClient(conn).Status(sctx, &chatpb.StatusRequest{})
	if err != nil || st.Role != RolePrimary || st.Epoch <= c.role.Epoch() {
		return
	}
	who := "peer " + st.Name
	if e, ok := c.confirmNewerEpoch(ctx, who, st.Epoch); ok {
		c.stepDown(fmt.Sprintf("%s is primary at newer epoch %d (the fencing authority holds %d)", who, st.Epoch, e), e)
	}
}

// checkNewerPrimary steps down when m is another core that is primary at a
// newer epoch, and UCS confirms that a newer epoch exists.
func (c *Core) checkNewerPrimary(ctx context.Context, m membership.Member) {
	if m.Name == c.cfg.Name || m.Meta.Kind != membership.KindCore || m.Meta.Role != RolePrimary || !c.samePair(m) ||
		m.State != membership.StateAlive || m.Meta.Epoch <= c.role.Epoch() {
		return
	}
	who := "member " + m.Name
	if e, ok := c.confirmNewerEpoch(ctx, who, m.Meta.Epoch); ok {
		c.stepDown(fmt.Sprintf("membership shows %s primary at newer epoch %d (the fencing authority holds %d)", m.Name, m.Meta.Epoch, e), e)
	}
}

// epochConfirmTimeout bounds the UCS read that confirms a peer's newer epoch.
const epochConfirmTimeout = time.Second

// refuteMemory is how long a claim that UCS refuted is not asked about again.
const refuteMemory = time.Second

// confirmNewerEpoch checks at UCS a newer epoch that who (a backup's hello,
// a gossiped meta, the peer's Status) claims: what peers say is only a
// hint, the epoch compare-and-set at UCS is the fencing authority. It
// returns the epoch UCS holds when that is newer than this core's (step
// down at it); false when UCS holds nothing newer (the claim is false: it
// is logged and not asked about again for refuteMemory) or cannot be read
// (the claim is neither believed nor refuted: the next check asks again).
// Staying primary while UCS is unreachable is safe: a core only becomes
// primary by winning the CAS at UCS, so an unconfirmed claim is no other
// primary; and were one to exist, this core's saves and second copies,
// stamped with its epoch, are rejected by UCS the moment it answers.
func (c *Core) confirmNewerEpoch(ctx context.Context, who string, claimed uint64) (uint64, bool) {
	c.refuteMu.Lock()
	r, seen := c.refuted[who]
	c.refuteMu.Unlock()
	if seen && r.claimed == claimed && time.Since(r.at) < refuteMemory {
		return 0, false
	}
	mine := c.role.Epoch()
	uctx, cancel := context.WithTimeout(ctx, epochConfirmTimeout)
	defer cancel()
	cur, err := c.fencer.Current(uctx, c.cfg.Cluster)
	switch {
	case err != nil:
		c.refuteMu.Lock()
		quiet := time.Since(c.unconfirmedLog) < 5*time.Second
		if !quiet {
			c.unconfirmedLog = time.Now()
		}
		c.refuteMu.Unlock()
		if !quiet { // asked every 250 ms while it lasts: log every 5 s
			c.log.WarnContext(ctx, "cannot confirm a peer's newer epoch at the fencing authority: staying as I am until it answers",
				"claimed_by", who, "claimed", claimed, "mine", mine, "err", err)
		}
		return 0, false
	case cur.Epoch > mine:
		return cur.Epoch, true
	}
	c.refuteMu.Lock()
	if c.refuted == nil {
		c.refuted = make(map[string]refutation)
	}
	c.refuted[who] = refutation{claimed: claimed, at: time.Now()}
	c.refuteMu.Unlock()
	c.log.WarnContext(ctx, "ignored a newer epoch that the fencing authority does not know", "claimed_by", who, "claimed", claimed,
		"authority_epoch", cur.Epoch, "authority_holder", cur.Holder, "mine", mine)
	return 0, false
}

// refutation remembers a claimed epoch that UCS did not confirm.
type refutation struct {
	claimed uint64
	at      time.Time
}

// publishMeta gossips the current role and epoch (within 2 s, and while ctx lives).
func (c *Core) publishMeta(ctx context.Context) {
	if c.members == nil {
		return
	}
	c.metaMu.Lock()
	defer c.metaMu.Unlock()
	role, epoch := c.role.RoleEpoch()
	if c.role.Unmerged() {
		// Not serving yet: the control plane must not route to it (it
		// gossips primary once finishRestoring opened it).
		role = RoleBackup
	}
	meta := membership.Meta{Kind: membership.KindCore, Role: role, Epoch: epoch, GRPCAddr: c.grpcAddr, HTTPAddr: c.httpAddr, Pair: c.cfg.Pair}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.members.SetMeta(ctx, meta); err != nil && ctx.Err() == nil {
		c.log.WarnContext(ctx, "could not publish membership meta", "err", err)
	}
}

// promote makes this backup primary after the primary was lost. recheck
// confirms the loss again immediately before the epoch claim (see
// claimPrimary); its error drops the promotion. A core whose replica may
// miss acknowledged events (replicaStale) claims the role but serves
// nothing until it merged what the old primary's second copies put in UCS.
func (c *Core) promote(ctx context.Context, why string, certain bool, recheck func(context.Context) error) error {
	ctx, span := c.tracer.Start(ctx, "chatcore.promote")
	defer span.End()
	span.SetAttributes(attribute.String("detection", why))
	start := time.Now()
	stale := c.replicaStale.Load()
	cl := claim{known: c.role.Epoch(), reason: "failover: " + why, recheck: recheck, restore: stale}
	if !certain {
		// Without proof that the process is gone, the primary's lease
		// decides: a primary that still renews at UCS is alive.
		cl.ifSilent = c.cfg.EpochLease
	}
	epoch, err := c.claimPrimary(ctx, cl)
	if err != nil {
		span.RecordError(err)
		return err
	}
	if stale {
		c.trustReplica(ctx, cl.known)
	}
	c.m.failovers.Inc()
	c.gossipDead.Store(false)
	n := c.restoreAll(ctx, "replica")
	c.log.InfoContext(ctx, "promotion complete", "epoch", epoch, "sessions_restored", n, "took", time.Since(start))
	return nil
}

// trustReplica asks the coordination cluster, after a claim that replaced
// followed (the epoch whose primary this core replicated), whether that
// primary ever acknowledged with second copies in UCS. If not, the replica
// holds every acknowledged event although its stream stopped: the new
// primary serves at once, without merging from UCS (which may be down).
// The claim came first, so that primary can no longer go solo.
func (c *Core) trustReplica(ctx context.Context, followed uint64) {
	rec, ok := c.fencer.(SoloRecorder)
	if !ok || followed == 0 || c.claimedFrom.Load() != followed {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	solo, err := rec.Solo(sctx, c.cfg.Cluster, followed)
	if err != nil || solo {
		c.log.InfoContext(ctx, "the old primary may have acknowledged with second copies in UCS: merging before serving", "old_epoch", followed, "solo", solo, "err", err)
		return
	}
	c.replicaStale.Store(false)
	c.finishRestoring()
	c.log.InfoContext(ctx, "the old primary never went solo: the replica is complete, serving without a merge", "old_epoch", followed)
}

// takeOver is the backup's side of a planned switchover.
func (c *Core) takeOver(ctx context.Context, from string, epoch uint64) (uint64, error) {
	ctx, span := c.tracer.Start(ctx, "chatcore.takeOver")
	defer span.End()
	c.log.InfoContext(ctx, "switchover: taking over", "from", from, "epoch", epoch)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	got, err := c.claimPrimary(cctx, claim{known: epoch, reason: "switchover from " + from})
	if err != nil {
		span.RecordError(err)
		return 0, err
	}
	c.m.failovers.Inc()
	return got, nil
}

// restoreAll restores every session this new primary holds, per
// session-restoration-mode, and resumes pending transcript saves. It
// returns the number of live sessions handled.
func (c *Core) restoreAll(ctx context.Context, source string) int {
	ctx, span := c.tracer.Start(ctx, "chatcore.restore")
	defer span.End()
	start := time.Now()
	stale := c.replicaStale.Load()
	if stale {
		source += "+ucs"
	}
	c.mu.RLock()
	all := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		all = append(all, s)
	}
	c.mu.RUnlock()
	// What UCS holds beyond the replica: second copies the old primary took
	// after our stream stopped (a partition, a silent primary). One listing
	// call; without it a stale replica merges every session.
	var stored map[string]ChatInfo
	merged := false
	if c.role.Unmerged() {
		// Not serving yet: merge everything UCS holds beyond the replica,
		// however long UCS takes, then open to clients.
		var err error
		if stored, err = c.catchUp(ctx, all); err != nil {
			c.log.WarnContext(ctx, "restoration stopped before the merge completed", "err", err)
			return 0
		}
		merged = true
		c.finishRestoring()
		c.log.InfoContext(ctx, "merged what UCS holds beyond the replica: serving", "sessions", len(all), "took", time.Since(start))
	} else {
		stored, _ = c.storedChats(ctx)
	}
	work := make(chan *session)
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for range 8 {
		wg.Go(func() {
			for s := range work {
				if c.restoreOne(ctx, s, source, stale && !merged, stored) {
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
func (c *Core) storedChats(ctx context.Context) (map[string]ChatInfo, error) {
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
func (c *Core) catchUp(ctx context.Context, all []*session) (map[string]ChatInfo, error) {
	delay := 50 * time.Millisecond
	pending := all
	if err := c.announceEpoch(ctx); err != nil {
		return nil, err
	}
	for {
		stored, lerr := c.storedChats(ctx)
		if lerr != nil && !errors.Is(lerr, errNoLister) {
			stored = nil // read every pending session on its own
		}
		var failed []*session
		for _, s := range pending {
			if !behind(s, true, stored) {
				continue
			}
			if err := c.mergeFromUCS(ctx, s); err != nil {
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
func (c *Core) announceEpoch(ctx context.Context) error {
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

// restoreOne restores one replicated session.
func (c *Core) restoreOne(ctx context.Context, s *session, source string, stale bool, stored map[string]ChatInfo) bool {
	if behind(s, stale, stored) {
		if err := c.mergeFromUCS(ctx, s); err != nil {
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
		c.announceFailover(ctx, s, noticeReason(source))
		c.log.InfoContext(ctx, "session restored", "session", s.id, "source", source, "events", n, "mode", c.cfg.SessionRestorationMode)
		c.m.restored.WithLabelValues(source).Inc()
	}
	c.saver.enqueue(s) // pending saves resume behind this core's breaker
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
func (c *Core) announceFailover(ctx context.Context, s *session, reason string) {
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
	rest, err := c.appendNotices(ctx, s, notices)
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
			if rest, err = c.appendNotices(ctx, s, rest); err != nil && status.Code(err) != codes.Unavailable {
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
func (c *Core) appendNotices(ctx context.Context, s *session, notices []*chatpb.Event) ([]*chatpb.Event, error) {
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
func (c *Core) mergeFromUCS(ctx context.Context, s *session) error {
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

// lookup returns the session id; a primary that does not hold it rebuilds it
// from its UCS transcript (session restoration for sessions the replica
// lacks, e.g. after a failover from a backup that was away). admit, when not
// nil, judges the rebuilt state before the core takes the session in (the
// caller's participant and key): a refused request leaves no trace (no
// session, no notices, no metric).
func (c *Core) lookup(ctx context.Context, id string, admit func(st *sessionlog.State) error) (*session, error) {
	p, foreign := c.foreignPair(id)
	if foreign && c.role.IsPrimary() {
		// N+1: a chat of another pair is served only once this core holds
		// that pair's epoch (adopt.go).
		if err := c.adopt(ctx, p); err != nil {
			return nil, err
		}
	}
	for {
		if s := c.session(id); s != nil {
			if foreign {
				// Replicated from the adopter this core took over from, or
				// adopted again: its saves go at this core's current epoch
				// of the pair.
				if cur, old := c.adoptedSaveOf(p), s.adopted.Load(); cur != nil && (old == nil || *old != *cur) {
					s.adopted.Store(cur)
				}
			}
			return s, nil
		}
		if !c.role.IsPrimary() {
			return nil, errUnknown
		}
		if c.tombs.has(id) {
			// Ended here with events UCS lacks: its copy there is older
			// than what was acknowledged, and must not reopen it.
			return nil, errTombstoned
		}
		c.restoreMu.Lock()
		wait, busy := c.restoring[id]
		if !busy {
			break // restoreMu held: this call rebuilds the session
		}
		c.restoreMu.Unlock()
		select { // another call is rebuilding it; it may be refused, so look again
		case <-wait:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	done := make(chan struct{})
	c.restoring[id] = done
	c.restoreMu.Unlock()
	defer func() {
		c.restoreMu.Lock()
		delete(c.restoring, id)
		c.restoreMu.Unlock()
		close(done)
	}()
	if s := c.session(id); s != nil { // restored while we registered
		return s, nil
	}
	ctx, span := c.tracer.Start(ctx, "chatcore.restoreFromUCS")
	defer span.End()
	tr, err := c.store.Transcript(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, errUnknown
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "session not held here and UCS failed: %v", err)
	}
	evs := withPlaceholders(id, tr.Events, 0)
	if len(evs) == 0 || evs[0].Kind != chatpb.EventKind_EVENT_KIND_SESSION_STARTED {
		return nil, errUnknown
	}
	s := newSession(id)
	s.startReq = evs[0].ClientRequestId
	if foreign {
		s.adopted.Store(c.adoptedSaveOf(p))
	}
	for _, ev := range evs {
		s.log.Commit(ev)
	}
	if admit != nil {
		if err := admit(&s.log.State); err != nil {
			return nil, err
		}
	}
	s.savedThrough = s.lastIndex()
	s.finalSaved = tr.Ended
	if s.log.State.Ended {
		s.endedAt = c.now()
	}
	c.putSession(s)
	c.log.InfoContext(ctx, "session restored", "session", id, "source", "ucs", "events", len(evs), "ended", s.log.State.Ended, "mode", c.cfg.SessionRestorationMode)
	c.m.restored.WithLabelValues("ucs").Inc()
	if foreign {
		c.snapshotToBackup(s) // its next events' second copy: the backup's ack
		c.adopted.restored.WithLabelValues(p).Inc()
		c.log.InfoContext(ctx, "session of an adopted pair restored", "pair", p, "session", id, "ended", s.log.State.Ended)
	}
	if !s.log.State.Ended {
		c.announceFailover(ctx, s, noticeReason("ucs"))
	}
	return s, nil
}

// Switchover hands the primary role to the in-sync backup: drain (new calls
// get UNAVAILABLE "draining" and in-flight appends finish, each already
// acknowledged by the backup), hand the epoch over on the replication
// stream (the backup claims epoch+1 at UCS and starts serving), then step
// down. pause_micros is the time from the start of the drain to the step-down.
func (c *Core) Switchover(ctx context.Context, req *chatpb.SwitchoverRequest) (*chatpb.SwitchoverResponse, error) {
	if c.cfg.AdminToken == "" || !keyMatches(hashKey(req.AdminToken), hashKey(c.cfg.AdminToken)) {
		return nil, status.Error(codes.PermissionDenied, "wrong admin token")
	}
	return c.handover(ctx, "switchover")
}

// handover drains, hands the epoch to the in-sync backup and steps down
// (Switchover, and a primary's clean shutdown).
func (c *Core) handover(ctx context.Context, why string) (*chatpb.SwitchoverResponse, error) {
	if !c.role.IsPrimary() {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not primary; ask the primary", c.cfg.Name)
	}
	l := c.repl.current()
	if l == nil || !l.inSync.Load() {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: %v", why, errNoBackup)
	}
	ctx, span := c.tracer.Start(ctx, "chatcore.switchover")
	defer span.End()
	start := time.Now()
	c.log.InfoContext(ctx, why+": draining", "to", l.name)
	c.role.SetDraining(true)
	c.health.SetServingStatus(ChatServiceName, healthNotServing)
	c.inflight.Lock()
	defer c.inflight.Unlock()
	abort := func(err error) (*chatpb.SwitchoverResponse, error) {
		if c.role.IsPrimary() {
			c.role.SetDraining(false)
			c.health.SetServingStatus(ChatServiceName, healthServing)
		}
		c.log.WarnContext(ctx, why+" aborted", "err", err, "role", c.Role())
		return nil, status.Errorf(codes.Aborted, "%s aborted: %v", why, err)
	}
	if !c.role.IsPrimary() || c.repl.current() != l {
		return abort(errors.New("role or backup changed while draining"))
	}
	epoch := c.role.Epoch()
	l.send(&chatpb.ReplicaMsg{Body: &chatpb.ReplicaMsg_Handover{Handover: &chatpb.Handover{Epoch: epoch}}}, false)
	var ans *chatpb.ReplicaAck
	select {
	case ans = <-l.handover:
	case <-l.done:
		select {
		case ans = <-l.handover: // answered just before the link closed
		default:
			// The link also closes when the handover worked before its
			// answer came: the backup's claim made UCS refuse one of this
			// core's saves (stale epoch) and this core stepped down. UCS
			// says who holds the epoch now.
			e, err := c.fencer.Current(ctx, c.cfg.Cluster)
			if err != nil || e.Epoch <= epoch || e.Holder != l.name {
				return abort(errors.New("backup link lost during the handover"))
			}
			ans = &chatpb.ReplicaAck{HandoverEpoch: e.Epoch}
		}
	case <-time.After(6 * time.Second):
		return abort(errors.New("backup did not answer the handover"))
	case <-ctx.Done():
		return abort(ctx.Err())
	}
	if ans.HandoverError != "" {
		return abort(errors.New(ans.HandoverError))
	}
	pause := time.Since(start)
	c.stepDown(fmt.Sprintf("%s to %s", why, l.name), ans.HandoverEpoch)
	c.m.switchoverPauseS.Observe(pause.Seconds())
	c.log.InfoContext(ctx, why+" done", "new_primary", l.name, "new_epoch", ans.HandoverEpoch, "pause", pause)
	return &chatpb.SwitchoverResponse{NewPrimary: l.name, NewEpoch: ans.HandoverEpoch, PauseMicros: pause.Microseconds()}, nil
}
