package chatcore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/detect"
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
	addr := c.peers.addr()
	if addr == "" && c.members != nil && c.previousHolderElsewhere(ctx) {
		// A primary existed before us: give gossip a moment to show it.
		deadline := time.Now().Add(startupPeerWait)
		for addr == "" && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			addr = c.peers.addr()
		}
	}
	if addr == "" {
		return nil, false
	}
	conn, err := c.peers.dial(addr)
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
	go func() { defer close(leaseDone); c.guard.renew(lctx, c.role.Epoch()) }()
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
			c.guard.checkMember(ctx, ev.Member)
		case <-t.C:
			if c.members != nil {
				for _, m := range c.members.Members() {
					c.guard.checkMember(ctx, m)
				}
			}
			if c.repl.Current() == nil {
				c.guard.checkPeer(ctx)
			}
		}
	}
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

// promote makes this backup primary after the primary was lost (dec, the
// detector's decision). recheck confirms the loss again immediately before
// the epoch claim (see claimPrimary); its error drops the promotion. A core whose replica may
// miss acknowledged events (replicaStale) claims the role but serves
// nothing until it merged what the old primary's second copies put in UCS.
func (c *Core) promote(ctx context.Context, dec detect.Decision, recheck func(context.Context) error) error {
	why := dec.Why
	// Calls reaching this core meanwhile wait for the outcome: until the
	// claim is decided (and, for a stale replica, whether it is trusted),
	// not across the restoration, which runs while the core serves.
	endChange := c.changing.begin()
	defer endChange()
	ctx, span := c.tracer.Start(ctx, "chatcore.promote")
	defer span.End()
	span.SetAttributes(attribute.String("detection", why))
	start := time.Now()
	stale := c.replicaStale.Load()
	// Without proof that the process is gone, the primary's lease
	// decides: a primary that still renews at UCS is alive.
	// Its backup is the primary it lost: it claims with the solo mark,
	// which its first acknowledgement needs, and reads the one it replaces.
	var solo soloClaimed
	cl := claim{known: c.role.Epoch(), holder: c.detect.PrimaryName(), reason: "failover: " + why, recheck: recheck, restore: stale, solo: &solo, ifSilent: dec.IfSilent(c.cfg.EpochLease)}
	epoch, err := c.claimPrimary(ctx, cl)
	if err != nil {
		// A refused claim (the primary's lease still lives) is a failed
		// attempt: the detector decides again and the next promote span
		// is the one that succeeds.
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
		return err
	}
	if stale {
		c.trustReplica(ctx, cl.known, solo)
	}
	endChange()
	c.m.failovers.Inc()
	c.detect.ClearGossip()
	n := c.restore.all(ctx, "replica")
	c.log.InfoContext(ctx, "promotion complete", "epoch", epoch, "sessions_restored", n, "took", time.Since(start))
	return nil
}

// trustReplica asks the coordination cluster, after a claim that replaced
// followed (the epoch whose primary this core replicated), whether that
// primary ever acknowledged with second copies in UCS. If not, the replica
// holds every acknowledged event although its stream stopped: the new
// primary serves at once, without merging from UCS (which may be down).
// The claim came first, so that primary can no longer go solo. A claim
// that wrote this core's own mark (claimed.done) read that primary's in
// the same transaction: its answer is used, without asking again.
func (c *Core) trustReplica(ctx context.Context, followed uint64, claimed soloClaimed) {
	rec, ok := c.fencer.(SoloRecorder)
	if !ok || followed == 0 || c.claimedFrom.Load() != followed {
		return
	}
	solo, err := claimed.WasSolo, error(nil)
	if !claimed.done {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		solo, err = rec.Solo(sctx, c.cfg.Cluster, followed)
	}
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
	defer c.changing.begin()() // calls reaching this core meanwhile wait for the outcome
	ctx, span := c.tracer.Start(ctx, "chatcore.takeOver")
	defer span.End()
	c.log.InfoContext(ctx, "switchover: taking over", "from", from, "epoch", epoch)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// The old primary becomes this core's backup, which is in sync only
	// once it acknowledged a fresh snapshot: until then the first
	// acknowledgements take their second copies in UCS (secondCopy), so the
	// claim records the solo mark in its own write, and the first of them
	// writes nothing more to the coordination cluster. The backup in sync
	// clears it.
	var solo soloClaimed
	got, err := c.claimPrimary(cctx, claim{known: epoch, holder: from, reason: "switchover from " + from, solo: &solo})
	if err != nil {
		span.RecordError(err)
		return 0, err
	}
	c.m.failovers.Inc()
	return got, nil
}

// lookup returns the session id; a primary that does not hold it has the
// restorer rebuild it from its UCS transcript (restorer.lookup: session
// restoration for sessions the replica lacks, e.g. after a failover from a
// backup that was away). A chat of another pair is adopted first. admit, when not
// nil, judges the rebuilt state before the core takes the session in (the
// caller's participant and key): a refused request leaves no trace (no
// session, no notices, no metric).
func (c *Core) lookup(ctx context.Context, id string, admit func(st *sessionlog.State) error) (*session, error) {
	p, foreign := c.adopted.foreignPair(id)
	if foreign && c.role.IsPrimary() {
		// N+1: a chat of another pair is served only once this core holds
		// that pair's epoch (adopt.go).
		if err := c.adopted.adopt(ctx, p); err != nil {
			return nil, err
		}
	}
	s := c.session(id) // the table first: a Send's lookup stays here
	if s == nil {
		var err error
		if s, err = c.restore.lookup(ctx, id, admit); err != nil {
			return nil, err
		}
	}
	if foreign {
		// Replicated from the adopter this core took over from, or adopted
		// again: its saves go at this core's current epoch of the pair.
		if cur, old := c.adopted.saveOf(p), s.adopted.Load(); cur != nil && (old == nil || *old != *cur) {
			s.adopted.Store(cur)
		}
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
	l := c.repl.Current()
	if l == nil || !l.InSync() {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: %v", why, errNoBackup)
	}
	ctx, span := c.tracer.Start(ctx, "chatcore.switchover")
	defer span.End()
	start := time.Now()
	c.log.InfoContext(ctx, why+": draining", "to", l.Name())
	// Calls arriving from now on wait for the outcome (served if the
	// handover aborts, else refused once this core stepped down), woken
	// after the drain's lock is released.
	defer c.changing.begin()()
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
	if !c.role.IsPrimary() || c.repl.Current() != l {
		return abort(errors.New("role or backup changed while draining"))
	}
	epoch := c.role.Epoch()
	l.Handover(epoch)
	var ans *chatpb.ReplicaAck
	select {
	case ans = <-l.HandoverAnswers():
	case <-l.Done():
		select {
		case ans = <-l.HandoverAnswers(): // answered just before the link closed
		default:
			// The link also closes when the handover worked before its
			// answer came: the backup's claim made UCS refuse one of this
			// core's saves (stale epoch) and this core stepped down. UCS
			// says who holds the epoch now.
			e, err := c.fencer.Current(ctx, c.cfg.Cluster)
			if err != nil || e.Epoch <= epoch || e.Holder != l.Name() {
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
	// Before the step-down ends the streams and the held calls are woken:
	// they are refused with errHandedOver (notPrimary).
	c.handedOver.Store(c.now().UnixNano())
	// Until this core, now the new primary's backup, acknowledged that
	// primary's snapshot, that primary takes its second copies in UCS
	// (secondCopy): a promotion before then merges from UCS what the solo
	// mark says it may have acknowledged (trustReplica). The snapshot_done
	// clears it (follower.go).
	c.replicaStale.Store(true)
	c.stepDown(fmt.Sprintf("%s to %s", why, l.Name()), ans.HandoverEpoch)
	c.m.switchoverPauseS.Observe(pause.Seconds())
	c.log.InfoContext(ctx, why+" done", "new_primary", l.Name(), "new_epoch", ans.HandoverEpoch, "pause", pause)
	return &chatpb.SwitchoverResponse{NewPrimary: l.Name(), NewEpoch: ans.HandoverEpoch, PauseMicros: pause.Microseconds()}, nil
}
