package chatcore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/sessionlog"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/pairs"
)

// This file is N+1 restoration (issue 10, point 5): a primary that gets a
// request about a chat of another pair adopts that pair first. It claims
// the other pair's epoch at the fencing authority only while that pair's
// lease is silent (no live primary there: both its cores are lost), keeps
// renewing that lease so that the pair's cores, when they come back, cannot
// claim it (they stay out, refused as holders of an older epoch), tells UCS
// the new epoch of the pair's service (a zombie primary of the pair is then
// fenced there too), and restores the pair's live chats from UCS with the
// disconnected/reconnected notices (lookup, the path of a promotion). The
// control plane routes the pair's chats here (xds: the adopted pair's
// header route points to the adopter's cluster). docs/design.md, "N+1",
// has the argument.

// errAdoptionLost refuses a chat of a pair whose adoption this core lost.
var errAdoptionLost = errors.New("adoption of the pair lost")

// adoption is one foreign pair this core adopted (or is adopting).
type adoption struct {
	// ready is closed when the claim ended; err is its outcome.
	ready chan struct{}
	err   error
	epoch uint64
	// lost is set when the renewal was refused: the pair's chats are
	// refused from then on.
	lost bool
	// restored is set when the pair's listed chats were restored.
	restored bool
}

// adopterCore is what adopting a pair needs of the core: its session
// table (a session, every session) and restoring a session from UCS
// (lookup).
type adopterCore interface {
	session(id string) *session
	all() []*session
	lookup(ctx context.Context, id string, admit func(st *sessionlog.State) error) (*session, error)
}

// adoptions are the foreign pairs of this core: it adopts them (claims
// their epoch, keeps their lease, restores their chats) and says where
// their sessions' saves go. It reaches the core only through adopterCore.
type adoptions struct {
	name, pair, cluster string        // this core, its pair, its pair's service
	lease               time.Duration // epoch-lease
	fencer              Fencer
	store               TranscriptStore
	members             Membership // nil: no gossip
	role                *role.State
	tombs               *tombstones
	core                adopterCore
	spawn               func(func(ctx context.Context)) bool // background work Serve owns
	log                 *slog.Logger

	mu   sync.Mutex // a leaf
	held map[string]*adoption
	// warned is when a failed adoption of each pair was last logged (one
	// line a second: every request about its chats tries).
	warned map[string]time.Time
	// gauge is hachat_core_adopted_pairs{pair}, restored
	// hachat_core_adopted_sessions_total{pair}.
	gauge    *prometheus.GaugeVec
	restored *prometheus.CounterVec
}

func newAdoptions(c *Core, reg prometheus.Registerer) (*adoptions, error) {
	a := &adoptions{name: c.cfg.Name, pair: c.cfg.Pair, cluster: c.cfg.Cluster, lease: c.cfg.EpochLease, fencer: c.fencer, store: c.store,
		members: c.members, role: c.role, tombs: &c.tombs, core: c, spawn: c.bg.spawn, log: c.log,
		held: map[string]*adoption{}, warned: map[string]time.Time{},
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_core_adopted_pairs",
			Help: "1 per other pair this core adopted (N+1: it holds that pair's epoch and serves its chats)."}, []string{"pair"}),
		restored: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_core_adopted_sessions_total",
			Help: "Live sessions of another pair this core restored from UCS after adopting that pair."}, []string{"pair"}),
	}
	for _, m := range []prometheus.Collector{a.gauge, a.restored} {
		if err := reg.Register(m); err != nil {
			return nil, fmt.Errorf("register adoption metrics: %w", err)
		}
	}
	return a, nil
}

// foreignPair returns the pair chat id names when it is not this core's.
func (ad *adoptions) foreignPair(id string) (string, bool) {
	p := pairs.Of(id)
	return p, p != pairs.Norm(ad.pair)
}

// pairService is the epoch service of pair p in this core's cluster
// (ad.cluster is already this core's own pair's service).
func (ad *adoptions) pairService(p string) string {
	base := ad.cluster
	if own := pairs.Norm(ad.pair); own != pairs.Default {
		base = strings.TrimSuffix(base, "-"+own)
	}
	return pairs.Service(base, p)
}

// adopt makes this primary the holder of pair p's epoch, once: concurrent
// callers wait for the one claim. It fails (UNAVAILABLE, the client
// retries) while p's own primary holds its lease, and for good once the
// adoption was lost (this core's copies of p's chats may then be stale:
// another core holds p's epoch; they are served again only after a
// restart, from UCS).
func (ad *adoptions) adopt(ctx context.Context, p string) error {
	ad.mu.Lock()
	a, ok := ad.held[p]
	if ok {
		ad.mu.Unlock()
		select {
		case <-a.ready:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		ad.mu.Lock()
		defer ad.mu.Unlock()
		switch {
		case a.lost:
			return status.Errorf(codes.Unavailable, "pair %s: %v", p, errAdoptionLost)
		case a.err != nil:
			return status.Errorf(codes.Unavailable, "pair %s not adopted: %v", p, a.err)
		}
		return nil
	}
	a = &adoption{ready: make(chan struct{})}
	ad.held[p] = a
	ad.mu.Unlock()

	epoch, err := ad.claimPair(ctx, p)
	ad.mu.Lock()
	a.err, a.epoch = err, epoch
	warn := false
	if err != nil {
		delete(ad.held, p) // the next request tries again
		if now := time.Now(); now.Sub(ad.warned[p]) >= time.Second {
			ad.warned[p], warn = now, true
		}
	}
	close(a.ready)
	ad.mu.Unlock()
	if err != nil {
		if warn {
			ad.log.WarnContext(ctx, "could not adopt another pair: its chats are refused for now", "pair", p, "err", err)
		}
		return status.Errorf(codes.Unavailable, "pair %s not adopted: %v", p, err)
	}
	ad.gauge.WithLabelValues(p).Set(1)
	ad.log.WarnContext(ctx, "adopted another pair: it lost both cores; its chats are served here", "pair", p, "service", ad.pairService(p), "epoch", epoch)
	ad.spawn(func(ctx context.Context) { ad.keepPair(ctx, p, epoch) })
	ad.spawn(func(ctx context.Context) { ad.restorePair(ctx, p) })
	return nil
}

// claimPair claims pair p's next epoch if its lease is silent, and makes
// UCS hold it before anything of the pair is read there (as announceEpoch
// does for a promotion), so that a save of the pair's old primary that UCS
// takes after the read is refused.
func (ad *adoptions) claimPair(ctx context.Context, p string) (uint64, error) {
	svc := ad.pairService(p)
	if name := ad.aliveCoreOf(p); name != "" {
		// Its backup holds the replica (fresher than UCS): the pair fails
		// over by itself; adopting it from UCS could lose what only the
		// replica holds.
		return 0, fmt.Errorf("pair %s has a live core (%s): it fails over by itself", p, name)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cur, err := ad.fencer.Current(ctx, svc)
	if err != nil {
		return 0, fmt.Errorf("read the epoch of %s: %w", svc, err)
	}
	got, err := ad.fencer.Claim(ctx, svc, cur.Epoch, ad.name, ad.lease)
	if err != nil {
		return 0, fmt.Errorf("claim the epoch of %s after %d (holder %s): %w", svc, cur.Epoch, cur.Holder, err)
	}
	if _, atUCS := ad.fencer.(StoreFencer); atUCS {
		return got.Epoch, nil
	}
	for {
		u, err := ad.store.Epoch(ctx, svc)
		if err == nil {
			if u.Epoch >= got.Epoch {
				return got.Epoch, nil
			}
			_, err = ad.store.ClaimEpoch(ctx, svc, u.Epoch, got.Epoch, ad.name)
			if err == nil || errors.Is(err, ErrEpochConflict) {
				continue
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("tell UCS epoch %d of %s: %w (last: %w)", got.Epoch, svc, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// aliveCoreOf returns a core of pair p that gossip shows alive ("" when
// none, or without gossip).
func (ad *adoptions) aliveCoreOf(p string) string {
	if ad.members == nil {
		return ""
	}
	for _, m := range ad.members.Members() {
		if m.Meta.Kind == membership.KindCore && pairs.Norm(m.Meta.Pair) == p && m.State == membership.StateAlive {
			return m.Name
		}
	}
	return ""
}

// keepPair renews the adopted pair's lease four times per epoch-lease
// while this core is primary. A refused renewal loses the adoption: the
// pair's chats are refused here from then on.
func (ad *adoptions) keepPair(ctx context.Context, p string, epoch uint64) {
	svc := ad.pairService(p)
	t := time.NewTicker(ad.lease / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !ad.role.IsPrimary() {
			ad.loseAdoption(ctx, p, "this core stepped down")
			return
		}
		if ad.pairDone(p) {
			// Every chat of the pair ended and is saved for good: let the
			// pair go. Its lease lapses, so its own cores, back, can claim
			// its epoch; a late request about one of its chats here
			// adopts it again while none of them did.
			ad.mu.Lock()
			delete(ad.held, p)
			ad.mu.Unlock()
			ad.gauge.DeleteLabelValues(p)
			ad.log.InfoContext(ctx, "adopted pair released: its last chat ended; its own cores may take its epoch back", "pair", p, "epoch", epoch)
			return
		}
		rctx, cancel := context.WithTimeout(ctx, ad.lease/2)
		_, err := ad.fencer.Renew(rctx, svc, epoch, ad.name)
		cancel()
		if errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrEpochConflict) {
			ad.loseAdoption(ctx, p, err.Error())
			return
		}
	}
}

// pairDone reports whether adopted pair p's listed chats were restored and
// every session of p here has ended and been saved for good.
func (ad *adoptions) pairDone(p string) bool {
	ad.mu.Lock()
	a, ok := ad.held[p]
	restored := ok && a.restored
	ad.mu.Unlock()
	if !restored {
		return false
	}
	for _, s := range ad.core.all() {
		if pairs.Of(s.id) != p {
			continue
		}
		s.mu.Lock()
		done := s.log.State.Ended && (s.save.FinalSaved || s.save.NoFinalSave)
		s.mu.Unlock()
		if !done {
			return false
		}
	}
	return true
}

// loseAdoption refuses pair p's chats from now on and forgets them.
func (ad *adoptions) loseAdoption(ctx context.Context, p, why string) {
	ad.mu.Lock()
	if a, ok := ad.held[p]; ok {
		a.lost = true
	}
	ad.mu.Unlock()
	ad.gauge.DeleteLabelValues(p)
	ad.log.ErrorContext(ctx, "adoption of another pair lost: its chats are refused here", "pair", p, "why", why)
}

// adoptionLost reports whether pair p was adopted here and lost.
func (ad *adoptions) adoptionLost(p string) bool {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	a, ok := ad.held[p]
	return ok && a.lost
}

// restorePair restores every live chat of adopted pair p that UCS lists
// (those not asked for yet), with the failover notices.
func (ad *adoptions) restorePair(ctx context.Context, p string) {
	l, ok := ad.store.(ChatLister)
	if !ok {
		return // restored one by one, on their first request; never released
	}
	start := time.Now()
	var list []ChatInfo
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		list, err = l.Chats(lctx, ChatFilter{Service: ad.pairService(p)})
		cancel()
		if err == nil {
			break
		}
		ad.log.WarnContext(ctx, "could not list an adopted pair's chats at UCS: retrying", "pair", p, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	n := 0
	for _, ci := range list {
		if ci.Ended || ad.core.session(ci.ChatID) != nil || ad.tombs.has(ci.ChatID) || pairs.Of(ci.ChatID) != p {
			continue
		}
		if _, err := ad.core.lookup(ctx, ci.ChatID, nil); err != nil {
			ad.log.WarnContext(ctx, "could not restore an adopted pair's session from UCS", "pair", p, "session", ci.ChatID, "err", err)
			continue
		}
		n++
	}
	ad.mu.Lock()
	if a, ok := ad.held[p]; ok {
		a.restored = true
	}
	ad.mu.Unlock()
	ad.log.InfoContext(ctx, "adopted pair's sessions restored", "pair", p, "sessions", n, "listed", len(list), "took", time.Since(start))
}

// adoptedSave is where the saves of an adopted pair's session go: UCS
// keeps every chat under the service it was first saved under, and fences
// that service's saves by its epoch.
type adoptedSave struct {
	service string
	epoch   uint64
}

// saveOf returns the save target of adopted pair p's sessions (nil
// when p is not adopted here).
func (ad *adoptions) saveOf(p string) *adoptedSave {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	a, ok := ad.held[p]
	if !ok || a.err != nil || a.epoch == 0 {
		return nil
	}
	return &adoptedSave{service: ad.pairService(p), epoch: a.epoch}
}
