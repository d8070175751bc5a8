// Package detect is the backup's failure detection: it decides whether the
// primary it replicated from is dead, how sure it is, and whether a
// decision still holds when the epoch claim is about to be made. It looks
// at the world only through Net (a direct TCP probe, the peer's Status,
// the witness, the fencing authority) and Members (the gossip view), so
// that each rule of docs/chatcore.md "Safety rules of promotion" runs in
// a test with scripted answers and a fixed clock.
//
// Detection, fastest first:
//  1. The replication stream breaks (a killed process resets its
//     connections at once) and the direct probe of the primary is refused
//     or times out; the witness, asked about the primary's own (gossiped)
//     address, confirms it cannot reach it either (without a witness
//     answer the membership view decides; with neither, the probe alone).
//  2. The stream falls silent or breaks, the probe connects, but the
//     primary's Status does not answer within replication-timeout: a
//     stopped process whose kernel still accepts. With gossip, wait for
//     it; without, the silence decides.
//  3. Membership declares the primary failed or left. Gossip is evidence,
//     not a verdict: the same checks decide.
//
// Only a refused connection the witness confirms, or a restarted peer
// answering as backup, is certain: such a claim need not wait for the
// primary's lease to lapse (Decision.IfSilent). A backup that has not
// replicated from a primary since it started never promotes on a probe
// alone, and a core that sees no third party (no other member alive, the
// witness and the fencing authority silent) is the one cut off: it never
// declares the primary dead.
package detect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/pairs"
)

// ErrPrimaryAlive drops a decision to promote: the re-check just before
// the epoch claim found the primary alive (or this core cut off).
var ErrPrimaryAlive = errors.New("the primary is not lost")

// Peer is what a core answers to Status.
type Peer struct {
	Role  string
	Epoch uint64
}

// Net is how the detector looks at the primary; the core gives it the
// network, a test scripts it.
type Net interface {
	// Dial connects to addr over TCP within the probe timeout and closes
	// the connection; the error of a refused connection wraps
	// syscall.ECONNREFUSED.
	Dial(ctx context.Context, addr string) error
	// Status asks the core at addr for its role and epoch within
	// replication-timeout; ok is false when it does not answer.
	Status(ctx context.Context, addr string) (p Peer, ok bool)
	// Witness asks the witness whether it reaches target. asked is false
	// when there is no witness to ask; err when it gave no answer.
	Witness(ctx context.Context, target string) (reachable, asked bool, err error)
	// AuthorityAnswers reports whether the fencing authority (UCS or
	// etcd) answers this core.
	AuthorityAnswers(ctx context.Context) bool
}

// Members is the gossip membership view.
type Members interface {
	// Members returns every member this node knows, itself included.
	Members() []membership.Member
	// Subscribe returns membership events until cancel is called.
	Subscribe() (<-chan membership.Event, func())
}

// Config is the detector's part of the core's configuration.
type Config struct {
	Name string // this core
	Pair string // its pair (package pairs): cores of other pairs are never its primary
}

// Detector decides whether the primary is dead. It remembers what the
// replication stream and gossip told it: whether this process ever
// replicated from a primary, the primary's name, and whether membership
// declared it failed.
type Detector struct {
	cfg     Config
	net     Net
	members Members // nil: no gossip
	now     func() time.Time
	log     *slog.Logger

	sawPrimary  atomic.Bool
	gossipDead  atomic.Bool
	primaryName atomic.Pointer[string]
}

// New returns a detector; members nil means no gossip, now nil time.Now.
func New(cfg Config, n Net, members Members, now func() time.Time, log *slog.Logger) *Detector {
	if now == nil {
		now = time.Now
	}
	return &Detector{cfg: cfg, net: n, members: members, now: now, log: log}
}

// Heard records a message of primary on the replication stream.
func (d *Detector) Heard(primary string) {
	if !d.sawPrimary.Load() {
		d.sawPrimary.Store(true)
	}
	if p := d.primaryName.Load(); p == nil || *p != primary {
		d.primaryName.Store(&primary)
	}
}

// SawPrimary reports whether this process has replicated from a primary.
func (d *Detector) SawPrimary() bool { return d.sawPrimary.Load() }

// PrimaryName is the primary this core replicates (or last replicated) from.
func (d *Detector) PrimaryName() string {
	if p := d.primaryName.Load(); p != nil {
		return *p
	}
	return ""
}

// GossipDead reports whether membership declared the primary failed or left.
func (d *Detector) GossipDead() bool { return d.gossipDead.Load() }

// ClearGossip forgets a failure membership declared (in sync with a
// primary again, or promoted).
func (d *Detector) ClearGossip() { d.gossipDead.Store(false) }

// Verdict is what the checks of a primary concluded.
type Verdict struct {
	Dead bool
	How  string // how they decided, for the log
	// Certain: the primary's process is gone (a refused connection the
	// witness confirms, or a restarted peer answering as backup).
	Certain bool
}

// cutOffMemory is how long a member that stopped being alive still counts
// as a third party that this core should be able to see: one lost longer
// ago is gone for its own reasons, not because this core is cut off.
const cutOffMemory = time.Minute

// cutOffNote explains a decision not to promote because of cutOff.
const cutOffNote = "no other member is alive and UCS does not answer either: this core is the one cut off"

// Check checks a primary whose stream broke: a direct probe of addr (the
// address this core replicates from), then the witness about the
// primary's own gossiped address (addr may be a path of ours, e.g. a cut
// link), else the membership view.
//
// A core that sees no third party (no other member alive, the witness and
// the fencing authority silent) is the one cut off, not the primary: it
// never declares the primary dead.
func (d *Detector) Check(ctx context.Context, addr string) Verdict {
	var member membership.Member
	known := false
	if d.members != nil {
		member, known = d.primaryMember(addr)
	}
	// isolated asks cutOff at most once per check (it may read UCS).
	var checked, cut bool
	isolated := func() bool {
		if !checked {
			checked, cut = true, d.cutOff(ctx, member, known)
		}
		return cut
	}
	err := d.net.Dial(ctx, addr)
	if err == nil {
		if st, ok := d.net.Status(ctx, addr); ok {
			if st.Role == role.Primary {
				return Verdict{How: "probe connected and the primary answers"}
			}
			// A restarted process answers as backup: the primary we followed is gone.
			return Verdict{Dead: true, How: fmt.Sprintf("the peer answers as %s at epoch %d: the primary is gone", st.Role, st.Epoch), Certain: true}
		}
		// The kernel accepts for a stopped process: it is silent, not gone.
		// Gossip decides when there is gossip; without it, the silence does.
		how := "probe connected but the primary does not answer"
		if known && member.State == membership.StateAlive {
			return Verdict{How: how + "; membership still shows it alive: waiting for gossip"}
		}
		if isolated() {
			return Verdict{How: how + "; " + cutOffNote}
		}
		return Verdict{Dead: true, How: how}
	}
	refused := errors.Is(err, syscall.ECONNREFUSED)
	how := "probe failed: " + err.Error()
	target := addr
	if known && member.Meta.GRPCAddr != "" {
		target = member.Meta.GRPCAddr
	}
	if reachable, asked, werr := d.net.Witness(ctx, target); asked {
		if werr == nil {
			if reachable {
				return Verdict{How: how + "; witness reaches " + target}
			}
			return Verdict{Dead: true, How: how + "; witness cannot reach " + target, Certain: refused}
		}
		d.log.WarnContext(ctx, "witness gave no answer", "err", werr)
		how += "; witness silent"
		if isolated() {
			return Verdict{How: how + "; " + cutOffNote}
		}
		if refused {
			// Nobody listens at the primary's address: its process is
			// probably gone, but a cut path refuses too (iptables REJECT)
			// and no witness tells them apart: not certain, so the claim
			// waits for the primary's lease to lapse.
			return Verdict{Dead: true, How: how + "; refused, unconfirmed"}
		}
	}
	if d.members != nil {
		if known && member.State == membership.StateAlive {
			return Verdict{How: how + "; membership still shows it alive: waiting for gossip"}
		}
		if isolated() {
			return Verdict{How: how + "; " + cutOffNote}
		}
		return Verdict{Dead: true, How: how + "; membership does not show it alive", Certain: refused}
	}
	return Verdict{Dead: true, How: how, Certain: refused}
}

// cutOff reports whether this core is the one cut off: it sees no member
// alive but itself and the primary it lost (primary, when known), while
// others were alive within cutOffMemory, and the fencing authority does
// not answer it either. A core that reaches the authority is not isolated
// (the primary and the control plane may both have died: it must fail
// over). Without gossip it cannot tell, and reports false.
func (d *Detector) cutOff(ctx context.Context, primary membership.Member, known bool) bool {
	if d.members == nil {
		return false
	}
	now := d.now()
	others := 0
	for _, m := range d.members.Members() {
		if m.Name == d.cfg.Name || known && m.Name == primary.Name || m.State == membership.StateLeft {
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
	return !d.net.AuthorityAnswers(ctx)
}

// samePair reports whether m is in this core's pair.
func (d *Detector) samePair(m membership.Member) bool {
	return pairs.Norm(m.Meta.Pair) == pairs.Norm(d.cfg.Pair)
}

// primaryMember finds the primary in the membership view.
func (d *Detector) primaryMember(addr string) (membership.Member, bool) {
	name := d.PrimaryName()
	for _, m := range d.members.Members() {
		if m.Meta.Kind == membership.KindCore && m.Name != d.cfg.Name && d.samePair(m) && (m.Name == name || m.Meta.GRPCAddr == addr) {
			return m, true
		}
	}
	return membership.Member{}, false
}

// StreamEnd is what the follower learnt from a replication stream that
// ended.
type StreamEnd struct {
	Synced        bool // the stream reached snapshot_done
	ReceivedAny   bool // the primary sent anything
	GossipFailed  bool // membership declared the primary failed while it ran
	FencedPrimary bool // the primary carried an older epoch than this core knows
}

// Outcome is what the follower does after a stream ended.
type Outcome int

// Outcomes of Decide.
const (
	Stay          Outcome = iota // nothing decided: redial
	Alive                        // the link broke but the primary lives: the replica is stale, resync
	GossipRefuted                // membership declared the primary failed, the checks do not confirm it
	Promote                      // the primary is lost
)

// Decision is the detector's answer after a stream ended.
type Decision struct {
	Outcome Outcome
	Why     string // the checks' account (or the promotion's reason)
	// Certain: the claim need not wait for the primary's lease.
	Certain bool
	// Stale: the replica may miss events the primary acknowledged with
	// second copies in UCS (the link broke while it lived, or its death is
	// not proven): restoration merges what UCS holds beyond it.
	Stale bool
}

// IfSilent is how long the primary's lease must have lapsed before the
// claim: 0 when the evidence is certain (the process is gone), else lease
// (a primary that still renews at the fencing authority is alive).
func (dec Decision) IfSilent(lease time.Duration) time.Duration {
	if dec.Certain {
		return 0
	}
	return lease
}

// Decide decides what to do after a stream from the primary at addr
// ended. A fenced primary is no reason to promote unless gossip declares
// it failed; a backup that never replicated from a primary promotes only
// on gossip; gossip is evidence, not a verdict: Check decides.
func (d *Detector) Decide(ctx context.Context, addr string, end StreamEnd) Decision {
	gossip := end.GossipFailed || d.gossipDead.Load()
	switch {
	case end.FencedPrimary && !gossip:
		return Decision{Outcome: Stay}
	case gossip || d.sawPrimary.Load():
	default:
		return Decision{Outcome: Stay}
	}
	v := d.Check(ctx, addr)
	if v.Dead {
		why := v.How
		if gossip {
			why = "membership declared the primary failed; " + v.How
		}
		// Only a refused connection proves the process is gone; a silent
		// or unreachable primary may have acknowledged events with second
		// copies in UCS since our stream stopped: merge them.
		return Decision{Outcome: Promote, Why: why, Certain: v.Certain, Stale: !v.Certain}
	}
	if end.Synced || end.ReceivedAny {
		// The link broke but the primary lives: it now takes its second
		// copies to UCS, so our copy may miss acknowledged events.
		return Decision{Outcome: Alive, Why: v.How, Stale: true}
	}
	if gossip {
		return Decision{Outcome: GossipRefuted, Why: v.How}
	}
	return Decision{Outcome: Stay, Why: v.How}
}

// Recheck runs the checks again immediately before the epoch claim: the
// decision is only as good as the moment it was made (the claim may wait
// while the world changes). It returns an error wrapping ErrPrimaryAlive
// when the primary is not lost after all.
func (d *Detector) Recheck(ctx context.Context, addr string) error {
	if v := d.Check(ctx, addr); !v.Dead {
		return fmt.Errorf("%w: %s", ErrPrimaryAlive, v.How)
	}
	return nil
}

// Watch signals on the returned channel when membership declares the
// primary (or the core at peerAddr()) failed or left, and clears that when
// it is alive again; stop ends the watch. Without gossip nothing is
// signalled.
func (d *Detector) Watch(peerAddr func() string) (failed chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	if d.members == nil {
		return ch, func() {}
	}
	events, cancel := d.members.Subscribe()
	go func() {
		for ev := range events {
			if ev.Type == membership.EventJoined || ev.Type == membership.EventUpdated {
				if ev.Member.Name == d.PrimaryName() && ev.Member.State == membership.StateAlive {
					d.gossipDead.Store(false) // it came back (or was never gone)
				}
				continue
			}
			if ev.Type != membership.EventFailed && ev.Type != membership.EventLeft {
				continue
			}
			name := d.PrimaryName()
			m := ev.Member
			if m.Name == d.cfg.Name || m.Meta.Kind != membership.KindCore && m.Name != name ||
				m.Meta.Kind == membership.KindCore && !d.samePair(m) {
				continue
			}
			if m.Name == name || (m.Meta.GRPCAddr != "" && m.Meta.GRPCAddr == peerAddr()) {
				d.log.Warn("membership: primary declared "+ev.Type.String(), "member", m.Name)
				d.gossipDead.Store(true)
				Rearm(ch)
			}
		}
	}()
	return ch, cancel
}

// Rearm signals failed again (a gossip failure signal consumed while
// sleeping), so that the next stream sees it at once.
func Rearm(failed chan struct{}) {
	select {
	case failed <- struct{}{}:
	default:
	}
}
