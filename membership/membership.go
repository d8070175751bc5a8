// Package membership tells every hachat part who is in the cluster: which
// chat cores are alive, which one is primary at which epoch, and where their
// services listen. It wraps hashicorp/memberlist (SWIM gossip with Lifeguard
// suspicion): each member gossips its Meta (kind, role, epoch, addresses);
// the failure detector probes members directly and, when a direct probe
// fails, through IndirectChecks other members, so that one cut link cannot
// make a live member look dead.
//
// A witness (RunWitness) is a member that only watches and votes: it lets a
// backup core confirm from a second vantage point that the primary is gone
// (ReachableHandler, AskReachable). The xds control plane may serve the same
// handler and play the same part.
package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hachat/hachat/telemetry"
)

// ErrClosed reports a call on a Membership after Shutdown (or a SetMeta
// after Leave).
var ErrClosed = errors.New("membership closed")

const (
	// subscriberBuffer is each subscriber's channel capacity. A subscriber
	// that falls this far behind loses the newest events (counted in
	// hachat_membership_events_dropped_total); Members() stays exact.
	subscriberBuffer = 256
	// joinRetryMin and joinRetryMax bound the backoff between attempts to
	// join seeds that are not (or no longer) members.
	joinRetryMin = 100 * time.Millisecond
	joinRetryMax = 2 * time.Second
	// deadRetention is how long a dead or left member stays in Members(),
	// so that watchers see it as dead rather than unknown.
	deadRetention = time.Hour
	// defaultBroadcastWait bounds SetMeta and Leave when ctx has no deadline.
	defaultBroadcastWait = 2 * time.Second
)

// Membership is this node's seat in the gossip cluster. It is safe for
// concurrent use.
type Membership struct {
	cfg     Config
	log     *slog.Logger
	ml      *memberlist.Memberlist
	mlReady atomic.Pointer[memberlist.Memberlist] // ml, for metric scrapes racing New
	metrics *metrics

	setMu sync.Mutex // serializes SetMeta and Leave

	metaMu    sync.Mutex
	metaBytes []byte // encoded local meta returned to memberlist

	mu      sync.Mutex
	members map[string]*entry
	leaving map[string]time.Time // names that announced a Leave
	subs    map[int]chan Event
	nextSub int
	left    bool
	closed  bool

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// entry is one row of the member table.
type entry struct {
	Member
}

// leaveIntent is the message a leaving member sends to every live member
// before its memberlist leave, so that they record Left instead of Dead
// (memberlist's events do not carry the difference).
type leaveIntent struct {
	Leave string `json:"leave"`
}

// New starts gossip on cfg.BindAddr with meta as this node's meta and joins
// the seeds in cfg.Join. Seeds that do not answer yet are retried in the
// background until they do, so members may start in any order. ctx bounds
// only the start; the membership runs until Shutdown.
func New(ctx context.Context, cfg Config, meta Meta, tel *telemetry.Telemetry) (*Membership, error) {
	mc, err := cfg.memberlistConfig()
	if err != nil {
		return nil, err
	}
	metaBytes, err := EncodeMeta(meta)
	if err != nil {
		return nil, fmt.Errorf("local meta: %w", err)
	}
	if tel == nil {
		tel = telemetry.Discard()
	}
	m := &Membership{
		cfg:       cfg,
		log:       tel.Logger.With("component", "membership", "node", cfg.Name),
		metaBytes: metaBytes,
		members:   make(map[string]*entry),
		leaving:   make(map[string]time.Time),
		subs:      make(map[int]chan Event),
		stop:      make(chan struct{}),
	}
	m.metrics, err = newMetrics(tel, m)
	if err != nil {
		return nil, err
	}
	if cfg.transport != nil {
		if mc.Transport, err = cfg.transport(); err != nil {
			m.metrics.unregister()
			return nil, fmt.Errorf("start gossip transport: %w", err)
		}
	}
	d := &delegate{m: m}
	mc.Delegate = d
	mc.Events = d
	mc.Ping = d
	mc.Logger = newMemberlistLogger(m)
	ml, err := memberlist.Create(mc)
	if err != nil {
		m.metrics.unregister()
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, err)
	}
	m.ml = ml
	m.mlReady.Store(ml)
	m.log.Info("gossip started", "addr", m.localAddr(), "kind", meta.Kind, "role", meta.Role, "epoch", meta.Epoch,
		"encrypted", mc.SecretKey != nil, "probe_interval", cfg.ProbeInterval.String(),
		"probe_timeout", cfg.ProbeTimeout.String(), "suspicion_mult", cfg.SuspicionMult,
		"gossip_interval", cfg.GossipInterval.String(), "seeds", cfg.Join)

	if seeds := m.seedsToJoin(); len(seeds) > 0 && ctx.Err() == nil {
		m.join(seeds, true)
	}
	m.wg.Add(1)
	go m.joinLoop()
	return m, nil
}

// localAddr is this node's gossip address as the others see it.
func (m *Membership) localAddr() string {
	return m.ml.LocalNode().Address()
}

// Local returns this node as a member.
func (m *Membership) Local() Member {
	m.mu.Lock()
	e, ok := m.members[m.cfg.Name]
	m.mu.Unlock()
	if ok {
		return e.Member
	}
	m.metaMu.Lock()
	meta, _ := DecodeMeta(m.metaBytes)
	m.metaMu.Unlock()
	return Member{Name: m.cfg.Name, Addr: m.localAddr(), Meta: meta, State: StateAlive}
}

// Members returns every member this node knows, itself included, sorted by
// name. Dead and left members stay listed (as such) for an hour.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.members))
	for _, e := range m.members {
		out = append(out, e.Member)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns the member called name, if this node knows it.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.members[name]
	if !ok {
		return Member{}, false
	}
	return e.Member, true
}

// SetMeta replaces this node's meta and gossips it at once. It waits until
// the update has been sent to the cluster, or ctx ends (two seconds when ctx
// has no deadline): an update that timed out is still applied locally and
// keeps spreading, and the error says so. Invalid meta is rejected with
// ErrBadMeta or ErrMetaTooLarge and changes nothing.
func (m *Membership) SetMeta(ctx context.Context, meta Meta) error {
	b, err := EncodeMeta(meta)
	if err != nil {
		return err
	}
	m.setMu.Lock()
	defer m.setMu.Unlock()
	m.mu.Lock()
	gone := m.closed || m.left
	m.mu.Unlock()
	if gone {
		return ErrClosed
	}
	m.metaMu.Lock()
	m.metaBytes = b
	m.metaMu.Unlock()
	if err := m.ml.UpdateNode(broadcastWait(ctx)); err != nil {
		m.metrics.metaUpdates.WithLabelValues("timeout").Inc()
		return fmt.Errorf("gossip meta update (applied locally, still spreading): %w", err)
	}
	m.metrics.metaUpdates.WithLabelValues("ok").Inc()
	m.log.Info("local meta updated", "kind", meta.Kind, "role", meta.Role, "epoch", meta.Epoch,
		"grpc", meta.GRPCAddr, "http", meta.HTTPAddr)
	return nil
}

// broadcastWait turns ctx's deadline into memberlist's timeout.
func broadcastWait(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return defaultBroadcastWait
}

// Subscribe returns a channel of membership events and a function that ends
// the subscription (and closes the channel). Every subscriber gets every
// event in order, through its own buffer of 256 events; delivery never
// blocks the gossip: when a subscriber's buffer is full the event is dropped
// for that subscriber and counted in hachat_membership_events_dropped_total.
// Events are hints: a subscriber that must be exact re-reads Members(), which
// is always current. The channel is also closed by Shutdown.
func (m *Membership) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, subscriberBuffer)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		close(ch)
		return ch, func() {}
	}
	id := m.nextSub
	m.nextSub++
	m.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if c, ok := m.subs[id]; ok {
			delete(m.subs, id)
			close(c)
		}
	}
}

// Leave announces to the cluster that this node leaves on purpose, so that
// the others record it as left rather than failed, and stops rejoining
// seeds. It waits for the announcement until ctx ends (two seconds without a
// deadline). Call Shutdown afterwards.
func (m *Membership) Leave(ctx context.Context) error {
	m.setMu.Lock()
	defer m.setMu.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	already := m.left
	m.left = true
	m.leaving[m.cfg.Name] = time.Now()
	m.mu.Unlock()
	if already {
		return nil
	}
	m.stopLoop()
	m.log.Info("leaving the cluster")

	// Tell every live member first, reliably (TCP), so that they know the
	// dead message that follows is a leave.
	msg, _ := json.Marshal(leaveIntent{Leave: m.cfg.Name})
	var wg sync.WaitGroup
	for _, n := range m.ml.Members() {
		if n.Name == m.cfg.Name {
			continue
		}
		wg.Add(1)
		go func(n *memberlist.Node) {
			defer wg.Done()
			if err := m.ml.SendReliable(n, msg); err != nil {
				m.log.Debug("leave intent not delivered", "to", n.Name, "err", err)
			}
		}(n)
	}
	wg.Wait()
	if err := m.ml.Leave(broadcastWait(ctx)); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip at once, without a leave: the others will detect
// this node as failed (call Leave first for a clean exit). It stops the
// background join loop, closes every subscriber channel and unregisters the
// metrics. It is safe to call more than once.
func (m *Membership) Shutdown() error {
	m.stopLoop()
	m.wg.Wait()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	err := m.ml.Shutdown()
	m.mu.Lock()
	m.closed = true
	for id, ch := range m.subs {
		delete(m.subs, id)
		close(ch)
	}
	m.mu.Unlock()
	m.metrics.unregister()
	m.log.Info("gossip stopped")
	if err != nil {
		return fmt.Errorf("stop gossip: %w", err)
	}
	return nil
}

func (m *Membership) stopLoop() {
	m.stopOnce.Do(func() { close(m.stop) })
}

// seedsToJoin returns the seeds that are not live members: all of them
// before the first join; later the ones that died or were never reached.
// Own address is skipped. A seed given as a host name is only retried while
// this node is alone, since it cannot be matched to a member address.
func (m *Membership) seedsToJoin() []string {
	self := m.localAddr()
	alive := make(map[string]bool)
	others := 0
	m.mu.Lock()
	for _, e := range m.members {
		if e.State == StateAlive || e.State == StateSuspect {
			alive[e.Addr] = true
			if e.Name != m.cfg.Name {
				others++
			}
		}
	}
	m.mu.Unlock()
	var out []string
	for _, s := range m.cfg.Join {
		host, _, err := net.SplitHostPort(s)
		if err != nil || s == self {
			continue
		}
		if net.ParseIP(host) == nil {
			if others == 0 {
				out = append(out, s)
			}
			continue
		}
		if !alive[s] {
			out = append(out, s)
		}
	}
	return out
}

// join contacts seeds; it reports whether at least one answered.
func (m *Membership) join(seeds []string, first bool) bool {
	n, err := m.ml.Join(seeds)
	if n > 0 {
		m.metrics.joins.WithLabelValues("ok").Inc()
		m.log.Info("joined cluster", "seeds", seeds, "contacted", n)
		return true
	}
	m.metrics.joins.WithLabelValues("failed").Inc()
	if err != nil {
		// memberlist returns a multierror whose text spans lines.
		err = errors.New(strings.Join(strings.Fields(err.Error()), " "))
	}
	if first {
		m.log.Info("no seed reachable yet, retrying in the background", "seeds", seeds, "err", err)
	} else {
		m.log.Debug("join attempt failed", "seeds", seeds, "err", err)
	}
	return false
}

// joinLoop retries seeds that are not members (start order, healed
// partitions, restarted seeds) and prunes long-dead members, until Leave or
// Shutdown.
func (m *Membership) joinLoop() {
	defer m.wg.Done()
	wait := joinRetryMin
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.prune(time.Now())
		if seeds := m.seedsToJoin(); len(seeds) > 0 && !m.join(seeds, false) {
			wait = min(wait*2, joinRetryMax)
		} else {
			wait = joinRetryMax
		}
		t.Reset(wait)
	}
}

// prune forgets members dead or left for longer than deadRetention.
func (m *Membership) prune(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, e := range m.members {
		if (e.State == StateDead || e.State == StateLeft) && now.Sub(e.Since) > deadRetention {
			delete(m.members, name)
		}
	}
	for name, t := range m.leaving {
		if now.Sub(t) > deadRetention {
			delete(m.leaving, name)
		}
	}
}

// apply records a state change from memberlist and fans it out. It runs on
// memberlist's goroutines, sometimes under memberlist's locks: it must not
// call back into memberlist and must not block.
func (m *Membership) apply(typ EventType, n *memberlist.Node) {
	meta, metaErr := decodeNodeMeta(n)
	now := time.Now()
	m.mu.Lock()
	e, ok := m.members[n.Name]
	if !ok {
		e = &entry{}
		m.members[n.Name] = e
	}
	e.Name = n.Name
	e.Addr = n.Address()
	if metaErr == nil {
		e.Meta = meta
	} else {
		e.Meta = Meta{}
	}
	prev := e.State
	switch typ {
	case EventJoined:
		e.State = StateAlive
		delete(m.leaving, n.Name)
	case EventUpdated:
		if e.State != StateAlive {
			e.State = StateAlive
		}
	case EventFailed:
		e.State = StateDead
		if _, ok := m.leaving[n.Name]; ok {
			typ = EventLeft
			e.State = StateLeft
		}
	}
	if e.State != prev || !ok {
		e.Since = now
	}
	member := e.Member
	m.publishLocked(Event{Type: typ, Member: member})
	m.mu.Unlock()

	if metaErr != nil {
		m.log.Warn("member gossips bad meta", "member", n.Name, "addr", member.Addr, "err", metaErr)
	}
	m.logEvent(typ, member)
}

// setSuspect marks name suspect (this node's probes failed) or alive again
// (a probe succeeded), logging and publishing the change.
func (m *Membership) setSuspect(name string, suspect bool) {
	m.mu.Lock()
	e, ok := m.members[name]
	if !ok || name == m.cfg.Name {
		m.mu.Unlock()
		return
	}
	var ev *Event
	switch {
	case suspect && e.State == StateAlive:
		e.State, e.Since = StateSuspect, time.Now()
		ev = &Event{Type: EventSuspected, Member: e.Member}
		m.publishLocked(*ev)
	case !suspect && e.State == StateSuspect:
		e.State, e.Since = StateAlive, time.Now()
	default:
		m.mu.Unlock()
		return
	}
	member := e.Member
	m.mu.Unlock()
	if ev != nil {
		m.logEvent(EventSuspected, member)
	} else {
		m.log.Info("member alive again", memberAttrs(member)...)
	}
}

// publishLocked fans ev out without blocking; m.mu is held.
func (m *Membership) publishLocked(ev Event) {
	m.metrics.events.WithLabelValues(ev.Type.String()).Inc()
	if m.closed {
		return
	}
	for _, ch := range m.subs {
		select {
		case ch <- ev:
		default:
			m.metrics.dropped.Inc()
		}
	}
}

func (m *Membership) logEvent(typ EventType, mb Member) {
	attrs := memberAttrs(mb)
	switch typ {
	case EventJoined:
		m.log.Info("member joined", attrs...)
	case EventUpdated:
		m.log.Info("member updated", attrs...)
	case EventSuspected:
		m.log.Warn("member suspect: probes failed", attrs...)
	case EventFailed:
		m.log.Warn("member failed", attrs...)
	case EventLeft:
		m.log.Info("member left", attrs...)
	}
}

func memberAttrs(mb Member) []any {
	return []any{"member", mb.Name, "addr", mb.Addr, "state", mb.State.String(), "kind", mb.Meta.Kind,
		"role", mb.Meta.Role, "epoch", mb.Meta.Epoch, "grpc", mb.Meta.GRPCAddr, "http", mb.Meta.HTTPAddr}
}

func decodeNodeMeta(n *memberlist.Node) (Meta, error) {
	return DecodeMeta(n.Meta)
}

// delegate adapts memberlist's callbacks; it keeps them off Membership's
// exported method set.
type delegate struct{ m *Membership }

// NodeMeta returns the encoded local meta (validated against the limit by
// EncodeMeta).
func (d *delegate) NodeMeta(limit int) []byte {
	d.m.metaMu.Lock()
	defer d.m.metaMu.Unlock()
	if len(d.m.metaBytes) > limit {
		return nil
	}
	return slices.Clone(d.m.metaBytes)
}

// NotifyMsg receives leave intents.
func (d *delegate) NotifyMsg(b []byte) {
	var li leaveIntent
	if err := json.Unmarshal(b, &li); err != nil || li.Leave == "" {
		d.m.log.Debug("ignored unknown user message", "bytes", len(b))
		return
	}
	now := time.Now()
	d.m.mu.Lock()
	d.m.leaving[li.Leave] = now
	// The intent travels over TCP before the leaver's dead message over
	// UDP, but the two are handled on different goroutines: under load the
	// dead message can win and the member is recorded failed. A member can
	// only announce its leave while alive, so a dead one whose intent
	// arrives now left on purpose: record that and tell the subscribers.
	if e, ok := d.m.members[li.Leave]; ok && e.State == StateDead {
		e.State, e.Since = StateLeft, now
		d.m.publishLocked(Event{Type: EventLeft, Member: e.Member})
	}
	d.m.mu.Unlock()
	d.m.log.Debug("member announced leave", "member", li.Leave)
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.m.apply(EventJoined, n) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.m.apply(EventUpdated, n) }
func (d *delegate) NotifyLeave(n *memberlist.Node)  { d.m.apply(EventFailed, n) }

func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete records the probe round trip and clears a suspicion.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, _ []byte) {
	d.m.metrics.probeRTT.Observe(rtt.Seconds())
	d.m.setSuspect(other.Name, false)
}

// Voters returns the live members that can confirm a failure from another
// vantage point: witnesses and xds control planes (they serve
// ReachablePath on their Meta.HTTPAddr), sorted by name.
func (m *Membership) Voters() []Member {
	var out []Member
	for _, mb := range m.Members() {
		if (mb.State == StateAlive || mb.State == StateSuspect) &&
			(mb.Meta.Kind == KindWitness || mb.Meta.Kind == KindXDS) && mb.Meta.HTTPAddr != "" {
			out = append(out, mb)
		}
	}
	return out
}

// Primary picks, among members, the core that claims the primary role with
// the newest epoch and is not dead or left; ties (two primaries claiming the
// same epoch, which fencing forbids) go to the first name. It reports false
// when no live core claims to be primary.
func Primary(members []Member) (Member, bool) {
	var best Member
	found := false
	for _, mb := range members {
		if mb.Meta.Kind != KindCore || mb.Meta.Role != RolePrimary || mb.State == StateDead || mb.State == StateLeft {
			continue
		}
		if !found || mb.Meta.Epoch > best.Meta.Epoch || (mb.Meta.Epoch == best.Meta.Epoch && mb.Name < best.Name) {
			best, found = mb, true
		}
	}
	return best, found
}
