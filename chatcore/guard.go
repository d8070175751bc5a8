package chatcore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/membership"
)

// guard keeps a primary's term honest while it leads (lead, failover.go):
// it renews the term's lease at the fencing authority and steps the core
// down when the authority refuses it, or confirms a newer epoch that a
// peer's Status or gossip shows. It reaches the core only through
// stepDown; peers say where the other core is.
type guard struct {
	name, service   string        // this core; the pair's service at the fencing authority
	lease           time.Duration // epoch-lease
	fencer          Fencer
	role            *role.State
	peers           *peers
	stepDown        func(reason string, newer uint64)
	fencingFailures *prometheus.CounterVec // op
	log             *slog.Logger

	mu             sync.Mutex            // a leaf: refuted and unconfirmedLog
	refuted        map[string]refutation // newer epochs peers claimed and the authority did not confirm
	unconfirmedLog time.Time             // last "cannot confirm at the authority" log line
}

func newGuard(c *Core) *guard {
	return &guard{name: c.cfg.Name, service: c.cfg.Cluster, lease: c.cfg.EpochLease, fencer: c.fencer, role: c.role, peers: c.peers,
		stepDown: c.stepDown, fencingFailures: c.m.fencingFailures, log: c.log}
}

// renew renews this primary's lease on epoch at the fencing authority
// four times per epoch-lease until ctx ends. A store that names a newer epoch or another
// holder fences it: it steps down at once. While UCS does not answer the
// lease lapses, and a backup may then take over (the claim needs UCS too).
func (g *guard) renew(ctx context.Context, epoch uint64) {
	t := time.NewTicker(g.lease / 4)
	defer t.Stop()
	var lastWarn time.Time
	for {
		rctx, cancel := context.WithTimeout(ctx, g.lease/2)
		_, err := g.fencer.Renew(rctx, g.service, epoch, g.name)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrEpochConflict):
			g.stepDown(fmt.Sprintf("the fencing authority refused the lease renewal of epoch %d: %v", epoch, err), storeEpoch(err))
			return
		case err != nil:
			g.fencingFailures.WithLabelValues("renew").Inc()
			if time.Since(lastWarn) <= 5*time.Second {
				break
			}
			lastWarn = time.Now()
			g.log.WarnContext(ctx, "could not renew the primary's lease at the fencing authority: a backup may take over once it lapses", "epoch", epoch, "lease", g.lease, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkPeer asks the peer, while no backup replicates from us, whether
// it became primary at a newer epoch (we may have been frozen, or cut off):
// then we step down at once.
func (g *guard) checkPeer(ctx context.Context) {
	addr := g.peers.addr()
	if addr == "" {
		return
	}
	conn, err := g.peers.dial(addr)
	if err != nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	st, err := chatpb.NewChatClient(conn).Status(sctx, &chatpb.StatusRequest{})
	if err != nil || st.Role != RolePrimary || st.Epoch <= g.role.Epoch() {
		return
	}
	who := "peer " + st.Name
	if e, ok := g.confirm(ctx, who, st.Epoch); ok {
		g.stepDown(fmt.Sprintf("%s is primary at newer epoch %d (the fencing authority holds %d)", who, st.Epoch, e), e)
	}
}

// checkMember steps down when m is another core that is primary at a
// newer epoch, and UCS confirms that a newer epoch exists.
func (g *guard) checkMember(ctx context.Context, m membership.Member) {
	if m.Name == g.name || m.Meta.Kind != membership.KindCore || m.Meta.Role != RolePrimary || !g.peers.samePair(m) ||
		m.State != membership.StateAlive || m.Meta.Epoch <= g.role.Epoch() {
		return
	}
	who := "member " + m.Name
	if e, ok := g.confirm(ctx, who, m.Meta.Epoch); ok {
		g.stepDown(fmt.Sprintf("membership shows %s primary at newer epoch %d (the fencing authority holds %d)", m.Name, m.Meta.Epoch, e), e)
	}
}

// epochConfirmTimeout bounds the UCS read that confirms a peer's newer epoch.
const epochConfirmTimeout = time.Second

// refuteMemory is how long a claim that UCS refuted is not asked about again.
const refuteMemory = time.Second

// confirm checks at UCS a newer epoch that who (a backup's hello,
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
func (g *guard) confirm(ctx context.Context, who string, claimed uint64) (uint64, bool) {
	g.mu.Lock()
	r, seen := g.refuted[who]
	g.mu.Unlock()
	if seen && r.claimed == claimed && time.Since(r.at) < refuteMemory {
		return 0, false
	}
	mine := g.role.Epoch()
	uctx, cancel := context.WithTimeout(ctx, epochConfirmTimeout)
	defer cancel()
	cur, err := g.fencer.Current(uctx, g.service)
	switch {
	case err != nil:
		g.mu.Lock()
		quiet := time.Since(g.unconfirmedLog) < 5*time.Second
		if !quiet {
			g.unconfirmedLog = time.Now()
		}
		g.mu.Unlock()
		if !quiet { // asked every 250 ms while it lasts: log every 5 s
			g.log.WarnContext(ctx, "cannot confirm a peer's newer epoch at the fencing authority: staying as I am until it answers",
				"claimed_by", who, "claimed", claimed, "mine", mine, "err", err)
		}
		return 0, false
	case cur.Epoch > mine:
		return cur.Epoch, true
	}
	g.mu.Lock()
	if g.refuted == nil {
		g.refuted = make(map[string]refutation)
	}
	g.refuted[who] = refutation{claimed: claimed, at: time.Now()}
	g.mu.Unlock()
	g.log.WarnContext(ctx, "ignored a newer epoch that the fencing authority does not know", "claimed_by", who, "claimed", claimed,
		"authority_epoch", cur.Epoch, "authority_holder", cur.Holder, "mine", mine)
	return 0, false
}

// refutation remembers a claimed epoch that UCS did not confirm.
type refutation struct {
	claimed uint64
	at      time.Time
}
