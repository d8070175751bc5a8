package chatcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/detect"
)

// This file is the backup's side: it replicates from the primary and,
// when the stream ends, asks the detector (package detect) whether the
// primary is dead. What the stream carries is applied by the applier
// (package replica, through applier.go's replicaTable).

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
	failed, stop := c.detect.Watch(c.peers.addr)
	defer stop()
	delay := 20 * time.Millisecond
	var lastWarn, lastDrop time.Time
	redialed := false // the last redial was immediate (redialNow)
	for ctx.Err() == nil && !c.role.IsPrimary() {
		addr := c.peers.addr()
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
		conn, err := c.peers.dial(addr)
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
			end.primaryName = c.detect.PrimaryName()
		}
		if end.synced {
			delay = 20 * time.Millisecond
		}
		if !end.receivedAny && time.Since(lastWarn) > 10*time.Second {
			lastWarn = time.Now()
			c.log.WarnContext(ctx, "cannot replicate from the peer yet (retrying)", "peer", addr, "err", end.err)
		}
		dec := c.detect.Decide(ctx, addr, detect.StreamEnd{Synced: end.synced, ReceivedAny: end.receivedAny,
			GossipFailed: end.gossipFailed, FencedPrimary: end.fencedPrimary})
		if dec.Stale {
			c.replicaStale.Store(true)
		}
		foundAlive := dec.Outcome == detect.Alive // the checks found the primary alive
		switch dec.Outcome {
		case detect.Alive:
			c.log.WarnContext(ctx, "replication link lost but the primary is alive: no failover, resyncing", "primary", end.primaryName, "err", end.err, "check", dec.Why)
		case detect.GossipRefuted:
			if time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				c.log.WarnContext(ctx, "membership declared the primary failed, but the checks do not confirm it: staying backup", "primary", end.primaryName, "check", dec.Why)
			}
		case detect.Promote:
			c.log.WarnContext(ctx, "primary lost: promoting", "primary", end.primaryName, "detection", dec.Why, "err", end.err,
				"replica_stale", c.replicaStale.Load())
			// The decision is only as good as the moment it was made: the
			// claim may wait (UCS unreachable) while the world changes.
			err := c.promote(ctx, dec, func(ctx context.Context) error { return c.detect.Recheck(ctx, addr) })
			if err == nil {
				return
			}
			if errors.Is(err, errPrimaryAlive) {
				foundAlive = true
				c.m.promotionsDropped.Inc()
				if time.Since(lastDrop) > 5*time.Second {
					lastDrop = time.Now()
					c.log.WarnContext(ctx, "promotion dropped: the primary is not lost after all; staying backup", "primary", end.primaryName, "reason", err)
				}
			} else {
				c.log.WarnContext(ctx, "promotion failed: staying backup", "err", err)
			}
		}
		if redialed = redialNow(end.synced, foundAlive, redialed); redialed {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		case <-failed:
			detect.Rearm(failed)
		}
		delay = min(delay*2, time.Second)
	}
}

// redialNow tells the follower to redial the primary at once instead of
// after its pause: when a stream that was in sync (synced) ended and the
// checks still found the primary alive (foundAlive: Decide's Alive, or a
// promotion dropped because the re-check before the claim found it alive).
// A primary killed with SIGKILL closes its connections before its
// listener, so a probe in that instant may still connect: the redial then
// meets the refused connection that proves it gone (React to the refused
// connection, not to a timer). The detector's rules are unchanged: only
// Decide promotes, after its checks. lastImmediate is whether the previous
// redial was immediate: then this one waits, so a link that keeps breaking
// while the primary lives is still paced (at least one pause per two
// breaks).
func redialNow(synced, foundAlive, lastImmediate bool) bool {
	return synced && foundAlive && !lastImmediate
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
	hello := &chatpb.ReplicaHello{Name: c.cfg.Name, Epoch: c.role.Epoch(), Token: c.cfg.AdminToken, Batches: true, ProgressBatches: true}
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
	ap := newApplier(c)
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
		if err := ap.Admit(msg); err != nil {
			end.fencedPrimary = true
			end.err = err
			c.log.WarnContext(ctx, "rejected replication from an older epoch", "primary", msg.Primary, "epoch", msg.Epoch, "known", c.role.Epoch())
			return end
		}
		end.primaryName, end.primaryEpoch, end.receivedAny = msg.Primary, msg.Epoch, true
		c.detect.Heard(msg.Primary)
		switch b := msg.Body.(type) {
		case *chatpb.ReplicaMsg_Heartbeat:
			continue
		case *chatpb.ReplicaMsg_Snapshot, *chatpb.ReplicaMsg_Event, *chatpb.ReplicaMsg_Saved, *chatpb.ReplicaMsg_SavedBatch:
			if err := ap.Apply(msg); err != nil {
				end.err = err
				c.log.WarnContext(ctx, "replicated message does not fit: resyncing", "err", err)
				return end
			}
		case *chatpb.ReplicaMsg_Batch:
			if err := ap.Apply(msg); err != nil {
				end.err = err
				c.log.WarnContext(ctx, "replicated batch does not fit: resyncing", "err", err)
				return end
			}
		case *chatpb.ReplicaMsg_SnapshotDone:
			if hold := c.beforeSnapshotAck; hold != nil {
				if err := hold(); err != nil {
					end.err = err
					return end
				}
			}
			n, kept := ap.Synced()
			end.synced = true
			c.replicaStale.Store(false)
			c.detect.ClearGossip()
			c.log.InfoContext(ctx, "in sync with the primary: replication catch-up done", "primary", msg.Primary, "epoch", msg.Epoch,
				"sessions", kept, "dropped_stale", n)
			c.bg.spawn(c.publishMeta) // gossip the epoch we now follow
			// The lease of a promotion's claim, granted ahead (fencing.go).
			c.bg.spawn(func(ctx context.Context) { prepareClaim(ctx, c.fencer, c.cfg.Cluster, c.log) })
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
				c.bg.spawn(func(ctx context.Context) { c.restore.all(ctx, "switchover") })
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

// detectNet is the network as the detector looks at the primary
// (detect.Net): a TCP probe, the peer's Status, the witness and the
// fencing authority.
type detectNet struct{ c *Core }

// Dial probes addr over TCP within probe-timeout.
func (n detectNet) Dial(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: n.c.cfg.ProbeTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	conn.Close() // connected is the answer; how the close went is not
	return nil
}

// Status asks the core at addr for its Status within replication-timeout,
// on a connection of its own: the shared peer connection may sit in a
// reconnect backoff after a long cut, and a check must not mistake that
// for a silent primary. ok is false when it does not answer.
func (n detectNet) Status(ctx context.Context, addr string) (detect.Peer, bool) {
	wait := n.c.cfg.ReplicationTimeout
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(n.c.peers.creds()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: wait}))
	if err != nil {
		return detect.Peer{}, false
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st, err := chatpb.NewChatClient(conn).Status(sctx, &chatpb.StatusRequest{})
	if err != nil {
		return detect.Peer{}, false
	}
	return detect.Peer{Role: st.Role, Epoch: st.Epoch}, true
}

// Witness asks the witness (Config.Witness, or one gossip shows) whether
// it reaches target, within four probe timeouts.
func (n detectNet) Witness(ctx context.Context, target string) (reachable, asked bool, err error) {
	w := n.c.peers.witnessAddr()
	if n.c.witness == nil || w == "" {
		return false, false, nil
	}
	wctx, cancel := context.WithTimeout(ctx, 4*n.c.cfg.ProbeTimeout)
	defer cancel()
	ok, err := n.c.witness(wctx, w, target)
	if err != nil {
		return false, true, fmt.Errorf("witness %s: %w", w, err)
	}
	return ok, true, nil
}

// AuthorityAnswers reports whether the fencing authority answers within
// four probe timeouts.
func (n detectNet) AuthorityAnswers(ctx context.Context) bool {
	uctx, cancel := context.WithTimeout(ctx, 4*n.c.cfg.ProbeTimeout)
	defer cancel()
	_, err := n.c.fencer.Current(uctx, n.c.cfg.Cluster)
	return err == nil
}

var errNoBackup = errors.New("no backup in sync")

// errPrimaryAlive drops a decision to promote: the re-check just before the
// epoch claim found the primary alive (or this core cut off).
var errPrimaryAlive = detect.ErrPrimaryAlive
