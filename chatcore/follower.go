package chatcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
)

// This file is the backup's side: it replicates from the primary and
// decides when the primary is dead. What the stream carries is applied by
// the applier (applier.go).
//
// Detection, fastest first:
//  1. The replication stream breaks (a killed process resets its
//     connections at once) and the backup's direct TCP probe of the primary
//     is refused or times out; the witness, asked about the primary's own
//     (gossiped) address, confirms it cannot reach it either (without a
//     witness answer the membership view decides; with neither, the probe
//     alone). Promote.
//  2. The stream falls silent (no event or heartbeat for twice
//     replication-timeout) or breaks, the probe connects, but the primary's
//     gRPC health check does not answer within replication-timeout: a
//     stopped process whose kernel still accepts. With gossip, wait for it;
//     without, promote.
//  3. Membership declares the primary failed or left (gossip with indirect
//     probes: the fallback for a silent primary). Promote.
//
// A backup that has not been connected to a primary since it started never
// promotes on a probe alone (it would steal the role from a primary that is
// still starting); it still promotes when gossip declares a known primary
// failed. Only a refused connection proves the primary's process is gone;
// any other promotion marks the replica stale, so that restoration merges
// what UCS holds beyond it.

// streamEnd says how a replication stream ended.
type streamEnd struct {
	synced        bool   // the stream reached snapshot_done
	gossipFailed  bool   // membership declared the primary failed
	handedOver    bool   // this core took over by a planned switchover
	primaryName   string // the primary's name as it announced itself
	err           error
	primaryEpoch  uint64
	receivedAny   bool
	fencedPrimary bool // the primary carried an older epoch than we know
}

// follow runs while this core is a backup. It returns when the core became
// primary or ctx ended.
func (c *Core) follow(ctx context.Context) {
	roleCh := c.role.Changed()
	if !c.paired() {
		select { // a standalone backup waits to be told otherwise
		case <-ctx.Done():
		case <-roleCh:
		}
		return
	}
	failed, stop := c.watchPrimaryFailure()
	defer stop()
	delay := 20 * time.Millisecond
	var lastWarn, lastDrop time.Time
	for ctx.Err() == nil && !c.role.IsPrimary() {
		addr := c.peerAddr()
		if addr == "" { // gossip has not shown the other core yet
			select {
			case <-ctx.Done():
				return
			case <-roleCh:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		conn, err := c.peerConn(addr)
		if err != nil {
			c.log.ErrorContext(ctx, "cannot dial peer", "peer", addr, "err", err)
			return
		}
		end := c.replicateOnce(ctx, conn, failed)
		if c.role.IsPrimary() || ctx.Err() != nil {
			return
		}
		if end.primaryName == "" {
			// A redial refused before any hello: the primary we lost is
			// still the last one that announced itself.
			end.primaryName, _ = c.primaryName.Load().(string)
		}
		if end.synced {
			delay = 20 * time.Millisecond
		}
		if !end.receivedAny && time.Since(lastWarn) > 10*time.Second {
			lastWarn = time.Now()
			c.log.WarnContext(ctx, "cannot replicate from the peer yet (retrying)", "peer", addr, "err", end.err)
		}
		promote, why, certain := false, "", false
		gossip := end.gossipFailed || c.gossipDead.Load()
		switch {
		case end.fencedPrimary && !gossip:
		case gossip || c.sawPrimary.Load():
			// Gossip is evidence, not a verdict: a backup cut off from
			// everyone sees every member fail. The same checks decide.
			if dead, how, refused := c.confirmDead(ctx, addr, gossip); dead {
				promote, why, certain = true, how, refused
				if gossip {
					why = "membership declared the primary failed; " + how
				}
			} else if end.synced || end.receivedAny {
				// The link broke but the primary lives: it now takes its second
				// copies to UCS, so our copy may miss acknowledged events.
				c.replicaStale.Store(true)
				c.log.WarnContext(ctx, "replication link lost but the primary is alive: no failover, resyncing", "primary", end.primaryName, "err", end.err, "check", how)
			} else if gossip && time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				c.log.WarnContext(ctx, "membership declared the primary failed, but the checks do not confirm it: staying backup", "primary", end.primaryName, "check", how)
			}
		}
		if promote && !certain {
			// Only a refused connection proves the process is gone; a silent
			// or unreachable primary may have acknowledged events with
			// second copies in UCS since our stream stopped: merge them.
			c.replicaStale.Store(true)
		}
		if promote {
			c.log.WarnContext(ctx, "primary lost: promoting", "primary", end.primaryName, "detection", why, "err", end.err,
				"replica_stale", c.replicaStale.Load())
			err := c.promote(ctx, why, certain, func(ctx context.Context) error {
				// The decision is only as good as the moment it was made: the
				// claim may wait (UCS unreachable) while the world changes.
				if dead, how, _ := c.confirmDead(ctx, addr, c.gossipDead.Load()); !dead {
					return fmt.Errorf("%w: %s", errPrimaryAlive, how)
				}
				return nil
			})
			if err == nil {
				return
			}
			if errors.Is(err, errPrimaryAlive) {
				c.m.promotionsDropped.Inc()
				if time.Since(lastDrop) > 5*time.Second {
					lastDrop = time.Now()
					c.log.WarnContext(ctx, "promotion dropped: the primary is not lost after all; staying backup", "primary", end.primaryName, "reason", err)
				}
			} else {
				c.log.WarnContext(ctx, "promotion failed: staying backup", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		case <-failed:
			c.failedAgain(failed)
		}
		delay = min(delay*2, time.Second)
	}
}

// failedAgain re-arms a gossip failure signal consumed while sleeping, so
// that the next replicateOnce sees it at once.
func (c *Core) failedAgain(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// peerCreds returns the transport credentials towards the other core.
func (c *Core) peerCreds() credentials.TransportCredentials {
	if c.tls != nil {
		return credentials.NewTLS(c.tls.ClientConfig(mtls.Allow(mtls.KindCore)))
	}
	return insecure.NewCredentials()
}

// peerConn returns the (lazily created, reused) connection to the peer at addr.
func (c *Core) peerConn(addr string) (*grpc.ClientConn, error) {
	c.peerMu.Lock()
	defer c.peerMu.Unlock()
	if c.peer != nil && c.peerConnAddr == addr {
		return c.peer, nil
	}
	if c.peer != nil {
		c.peer.Close()
		c.peer = nil
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(c.peerCreds()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(c.tel.Tracer), otelgrpc.WithPropagators(c.tel.Propagator))),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("dial peer %s: %w", addr, err)
	}
	c.peer, c.peerConnAddr = conn, addr
	return conn, nil
}

// replicateOnce runs one Replicate stream until it ends.
func (c *Core) replicateOnce(ctx context.Context, conn *grpc.ClientConn, failed <-chan struct{}) (end streamEnd) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := chatpb.NewReplicationClient(conn).Replicate(sctx)
	if err != nil {
		end.err = err
		return end
	}
	return c.replicate(ctx, cancel, stream, failed)
}

// replicaStream is the backup's end of a Replicate stream: the two calls
// replicate needs (a test gives it a scripted stream).
type replicaStream interface {
	Send(*chatpb.ReplicaAck) error
	Recv() (*chatpb.ReplicaMsg, error)
}

// replicate runs one opened Replicate stream until it ends. cancel ends the
// stream (it cancels the stream's context); ctx is the follower's context.
func (c *Core) replicate(ctx context.Context, cancel context.CancelFunc, stream replicaStream, failed <-chan struct{}) (end streamEnd) {
	hello := &chatpb.ReplicaHello{Name: c.cfg.Name, Epoch: c.role.Epoch(), Token: c.cfg.AdminToken, Batches: true}
	if err := stream.Send(&chatpb.ReplicaAck{Hello: hello}); err != nil {
		end.err = err
		return end
	}
	var lastHeard atomic.Int64
	lastHeard.Store(time.Now().UnixNano())
	var applied atomic.Uint64
	ackWake := make(chan struct{}, 1)
	// answers is buffered so that handing over an answer never waits for
	// the ack sender; the sender may be gone (a failed ack send ends it), so
	// every exchange with it also selects on senderGone.
	answers := make(chan *chatpb.ReplicaAck, 1)
	answered := make(chan error, 1)
	senderGone := make(chan struct{})
	done := make(chan struct{})
	defer close(done)
	go func() { // the only sender after hello: acknowledgements, coalesced, and handover answers
		defer close(senderGone)
		var sent uint64
		for {
			select {
			case <-done:
				return
			case a := <-answers:
				err := stream.Send(a)
				sent = max(sent, a.Seq)
				answered <- err
				continue
			case <-ackWake:
			}
			if a := applied.Load(); a > sent {
				if err := stream.Send(&chatpb.ReplicaAck{Seq: a}); err != nil {
					cancel()
					return
				}
				sent = a
			}
		}
	}()
	var gossip atomic.Bool
	go func() { // gossip failure and silence watchdog
		t := time.NewTicker(c.cfg.ReplicationTimeout / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-failed:
				gossip.Store(true)
				cancel()
				return
			case <-t.C:
				if time.Since(time.Unix(0, lastHeard.Load())) > 2*c.cfg.ReplicationTimeout {
					c.log.WarnContext(ctx, "primary silent on the replication stream", "silent_for", time.Since(time.Unix(0, lastHeard.Load())))
					cancel()
					return
				}
			}
		}
	}()
	ap := c.newApplier()
	for {
		msg, err := stream.Recv()
		if err != nil {
			end.err = err
			end.gossipFailed = gossip.Load()
			if end.synced {
				c.log.WarnContext(ctx, "replication stream broke", "primary", end.primaryName, "err", err)
			}
			return end
		}
		lastHeard.Store(time.Now().UnixNano())
		if err := ap.admit(msg); err != nil {
			end.fencedPrimary = true
			end.err = err
			c.log.WarnContext(ctx, "rejected replication from an older epoch", "primary", msg.Primary, "epoch", msg.Epoch, "known", c.role.Epoch())
			return end
		}
		end.primaryName, end.primaryEpoch, end.receivedAny = msg.Primary, msg.Epoch, true
		if !c.sawPrimary.Load() {
			c.sawPrimary.Store(true)
		}
		c.primaryName.Store(msg.Primary)
		switch b := msg.Body.(type) {
		case *chatpb.ReplicaMsg_Heartbeat:
			continue
		case *chatpb.ReplicaMsg_Snapshot, *chatpb.ReplicaMsg_Event, *chatpb.ReplicaMsg_Saved:
			if err := ap.apply(msg); err != nil {
				end.err = err
				c.log.WarnContext(ctx, "replicated message does not fit: resyncing", "err", err)
				return end
			}
		case *chatpb.ReplicaMsg_Batch:
			if err := ap.apply(msg); err != nil {
				end.err = err
				c.log.WarnContext(ctx, "replicated batch does not fit: resyncing", "err", err)
				return end
			}
		case *chatpb.ReplicaMsg_SnapshotDone:
			n, kept := ap.synced()
			end.synced = true
			c.replicaStale.Store(false)
			c.gossipDead.Store(false)
			c.log.InfoContext(ctx, "in sync with the primary: replication catch-up done", "primary", msg.Primary, "epoch", msg.Epoch,
				"sessions", kept, "dropped_stale", n)
			c.bg.spawn(c.publishMeta) // gossip the epoch we now follow
		case *chatpb.ReplicaMsg_Handover:
			epoch, err := c.takeOver(ctx, msg.Primary, b.Handover.Epoch)
			ans := &chatpb.ReplicaAck{Seq: msg.Seq}
			if err != nil {
				ans.HandoverError = err.Error()
			} else {
				ans.HandoverEpoch = epoch
			}
			applied.Store(msg.Seq)
			if serr := answer(ans, answers, answered, senderGone); serr != nil {
				c.log.WarnContext(ctx, "could not answer the handover (the old primary learns the epoch from UCS or gossip)", "err", serr)
			}
			if err == nil {
				end.handedOver = true
				c.bg.spawn(func(ctx context.Context) { c.restoreAll(ctx, "switchover") })
				// Let the old primary close the stream (it steps down on our
				// answer), so that the answer is not cut off by our cancel.
				t := time.AfterFunc(2*time.Second, cancel)
				for {
					if _, err := stream.Recv(); err != nil {
						break
					}
				}
				t.Stop()
				return end
			}
			continue
		}
		if msg.Seq > 0 {
			applied.Store(msg.Seq)
			select {
			case ackWake <- struct{}{}:
			default:
			}
		}
	}
}

// errAckSenderGone answers a handover whose answer could not be sent: the
// ack sender had already stopped (an earlier send failed).
var errAckSenderGone = errors.New("replication stream broke before the handover answer")

// answer hands a handover answer to the ack sender and waits for its send.
// It never blocks on a sender that has stopped: the follower must go on to
// lead (or resync) whatever became of the stream.
func answer(ans *chatpb.ReplicaAck, answers chan<- *chatpb.ReplicaAck, answered <-chan error, senderGone <-chan struct{}) error {
	select {
	case answers <- ans:
	case <-senderGone:
		return errAckSenderGone
	}
	select {
	case err := <-answered:
		return err
	case <-senderGone:
		// It may have sent the answer just before it stopped.
		select {
		case err := <-answered:
			return err
		default:
			return errAckSenderGone
		}
	}
}

// confirmDead checks a primary whose stream broke: a direct probe of addr
// (the address we replicate from), then the witness about the primary's own
// gossiped address (addr may be a path of ours, e.g. a cut link), else the
// membership view. It says how it decided.
//
// A core that sees no third party (no other member alive, the witness and
// UCS silent) is the one cut off, not the primary: it never declares the
// primary dead. gossip says membership already declared the primary
// failed (with a stale view right after a heal, too: the checks decide).
func (c *Core) confirmDead(ctx context.Context, addr string, gossip bool) (dead bool, how string, refused bool) {
	var member membership.Member
	known := false
	if c.members != nil {
		member, known = c.primaryMember(addr)
	}
	// isolated asks cutOff at most once per check (it may read UCS).
	var checked, cut bool
	isolated := func() bool {
		if !checked {
			checked, cut = true, c.cutOff(ctx, member, known)
		}
		return cut
	}
	d := net.Dialer{Timeout: c.cfg.ProbeTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
		if st, ok := c.peerStatus(ctx, addr, c.cfg.ReplicationTimeout); ok {
			if st.Role == RolePrimary {
				return false, "probe connected and the primary answers", false
			}
			// A restarted process answers as backup: the primary we followed is gone.
			return true, fmt.Sprintf("the peer answers as %s at epoch %d: the primary is gone", st.Role, st.Epoch), true
		}
		// The kernel accepts for a stopped process: it is silent, not gone.
		// Gossip decides when there is gossip; without it, the silence does.
		how := "probe connected but the primary does not answer"
		if known && member.State == membership.StateAlive {
			return false, how + "; membership still shows it alive: waiting for gossip", false
		}
		if isolated() {
			return false, how + "; " + cutOffNote, false
		}
		return true, how, false
	}
	refused = errors.Is(err, syscall.ECONNREFUSED)
	how = "probe failed: " + err.Error()
	target := addr
	if known && member.Meta.GRPCAddr != "" {
		target = member.Meta.GRPCAddr
	}
	if w := c.witnessAddr(); c.witness != nil && w != "" {
		wctx, cancel := context.WithTimeout(ctx, 4*c.cfg.ProbeTimeout)
		ok, werr := c.witness(wctx, w, target)
		cancel()
		if werr == nil {
			if ok {
				return false, how + "; witness reaches " + target, false
			}
			return true, how + "; witness cannot reach " + target, refused
		}
		c.log.WarnContext(ctx, "witness gave no answer", "witness", w, "err", werr)
		how += "; witness silent"
		if isolated() {
			return false, how + "; " + cutOffNote, false
		}
		if refused {
			// Nobody listens at the primary's address: its process is
			// probably gone, but a cut path refuses too (iptables REJECT)
			// and no witness tells them apart: not certain, so the claim
			// waits for the primary's lease to lapse.
			return true, how + "; refused, unconfirmed", false
		}
	}
	if c.members != nil {
		if known && member.State == membership.StateAlive {
			return false, how + "; membership still shows it alive: waiting for gossip", false
		}
		if isolated() {
			return false, how + "; " + cutOffNote, false
		}
		return true, how + "; membership does not show it alive", refused
	}
	return true, how, refused
}

// cutOffMemory is how long a member that stopped being alive still counts
// as a third party that this core should be able to see: one lost longer
// ago is gone for its own reasons, not because this core is cut off.
const cutOffMemory = time.Minute

// cutOffNote explains a decision not to promote because of cutOff.
const cutOffNote = "no other member is alive and UCS does not answer either: this core is the one cut off"

// cutOff reports whether this core is the one cut off: it sees no member
// alive but itself and the primary it lost (primary, when known), while
// others were alive within cutOffMemory, and UCS does not answer it
// either. A core that reaches UCS is not isolated (the primary and the
// control plane may both have died: it must fail over). Without gossip it
// cannot tell, and reports false.
func (c *Core) cutOff(ctx context.Context, primary membership.Member, known bool) bool {
	if c.members == nil {
		return false
	}
	now := time.Now()
	others := 0
	for _, m := range c.members.Members() {
		if m.Name == c.cfg.Name || known && m.Name == primary.Name || m.State == membership.StateLeft {
			continue
		}
		if m.State == membership.StateAlive {
			return false
		}
		if m.Since.IsZero() || now.Sub(m.Since) < cutOffMemory {
			others++
		}
	}
	if others == 0 {
		return false
	}
	uctx, cancel := context.WithTimeout(ctx, 4*c.cfg.ProbeTimeout)
	defer cancel()
	_, err := c.fencer.Current(uctx, c.cfg.Cluster)
	return err != nil
}

// peerStatus asks the core at addr for its Status within wait, on a
// connection of its own: the shared peer connection may sit in a reconnect
// backoff after a long cut, and a check must not mistake that for a silent
// primary. ok is false when it does not answer.
func (c *Core) peerStatus(ctx context.Context, addr string, wait time.Duration) (*chatpb.StatusResponse, bool) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(c.peerCreds()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: wait}))
	if err != nil {
		return nil, false
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st, err := chatpb.NewChatClient(conn).Status(sctx, &chatpb.StatusRequest{})
	return st, err == nil
}

// primaryMember finds the primary in the membership view.
func (c *Core) primaryMember(addr string) (membership.Member, bool) {
	name, _ := c.primaryName.Load().(string)
	for _, m := range c.members.Members() {
		if m.Meta.Kind == membership.KindCore && m.Name != c.cfg.Name && c.samePair(m) && (m.Name == name || m.Meta.GRPCAddr == addr) {
			return m, true
		}
	}
	return membership.Member{}, false
}

// watchPrimaryFailure signals when membership declares the peer core failed or left.
func (c *Core) watchPrimaryFailure() (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	if c.members == nil {
		return ch, func() {}
	}
	events, cancel := c.members.Subscribe()
	go func() {
		for ev := range events {
			if ev.Type == membership.EventJoined || ev.Type == membership.EventUpdated {
				if name, _ := c.primaryName.Load().(string); ev.Member.Name == name && ev.Member.State == membership.StateAlive {
					c.gossipDead.Store(false) // it came back (or was never gone)
				}
				continue
			}
			if ev.Type != membership.EventFailed && ev.Type != membership.EventLeft {
				continue
			}
			name, _ := c.primaryName.Load().(string)
			m := ev.Member
			if m.Name == c.cfg.Name || m.Meta.Kind != membership.KindCore && m.Name != name ||
				m.Meta.Kind == membership.KindCore && !c.samePair(m) {
				continue
			}
			if m.Name == name || (m.Meta.GRPCAddr != "" && m.Meta.GRPCAddr == c.peerAddr()) {
				c.log.Warn("membership: primary declared "+ev.Type.String(), "member", m.Name)
				c.gossipDead.Store(true)
				c.failedAgain(ch)
			}
		}
	}()
	return ch, cancel
}

var errNoBackup = errors.New("no backup in sync")

// errPrimaryAlive drops a decision to promote: the re-check just before the
// epoch claim found the primary alive (or this core cut off).
var errPrimaryAlive = errors.New("the primary is not lost")
