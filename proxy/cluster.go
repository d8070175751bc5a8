package proxy

import (
	"context"
	"errors"
	"net"
	"sort"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc"
)

// hostState is the result of the sidecar's own active health checks.
type hostState int

const (
	stateUnknown hostState = iota // not checked yet
	stateUp                       // passed healthy_threshold checks
	stateDown                     // failed unhealthy_threshold checks, or refused a connection
)

func (s hostState) String() string {
	switch s {
	case stateUp:
		return "up"
	case stateDown:
		return "down"
	default:
		return "unknown"
	}
}

// cluster is the upstream cluster the sidecar's listener serves.
type cluster struct {
	name       string
	info       clusterInfo
	hosts      map[string]*host // by address
	chosen     *host            // where new connections go; nil when none
	definitive bool             // chosen is a healthy primary (not a fallback)
	// orphans are hosts removed from EDS that still carry client
	// connections. A control plane that restarts, or publishes a partial
	// view for a moment, must not cut live chats: the connections stay until
	// they end, the host dies, or a healthy primary elsewhere takes over.
	orphans map[string]*host
	// rr turns the start among equally loaded hosts of a balanced
	// cluster, so that a burst of new connections spreads.
	rr int
}

// balanced reports whether c is a cluster of equal instances (webapi,
// interaction behind the edge: a TCP health check) rather than a primary and
// its backups (the chat cores: a gRPC Status check). A balanced cluster
// spreads new connections over every host not known to be down, least
// connections first, and closes connections only to a host that goes down.
func (c *cluster) balanced() bool { return c.info.hc.Kind == checkTCP }

// order is the order in which a new connection tries c's hosts: rank for a
// primary/backup cluster; for a balanced one, hosts not known to be down
// before down ones, fewest connections first, ties taken in turn.
// p.mu is held.
func (c *cluster) order() []*host {
	if !c.balanced() {
		return rank(c.hosts)
	}
	out := make([]*host, 0, len(c.hosts))
	for _, h := range c.hosts {
		out = append(out, h)
	}
	down := func(h *host) bool { return h.state == stateDown }
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if down(a) != down(b) {
			return !down(a)
		}
		if len(a.conns) != len(b.conns) {
			return len(a.conns) < len(b.conns)
		}
		return a.addr < b.addr
	})
	k := 0
	for k < len(out) && down(out[k]) == down(out[0]) && len(out[k].conns) == len(out[0].conns) {
		k++
	}
	if k > 1 {
		r := c.rr % k
		c.rr++
		lead := append(append([]*host{}, out[r:k]...), out[:r]...)
		copy(out, lead)
	}
	return out
}

func newCluster(ci clusterInfo) *cluster {
	return &cluster{name: ci.name, info: ci, hosts: map[string]*host{}, orphans: map[string]*host{}}
}

// host is one upstream endpoint with its own health state. Fields are
// guarded by Proxy.mu except the breaker (safe on its own) and the checker's
// private fields.
type host struct {
	addr    string
	cluster *cluster
	ep      endpointInfo // from EDS

	state     hostState
	role      string // from Status
	epoch     uint64 // from Status
	name      string // from Status
	draining  bool
	succ      int
	fail      int
	lastCheck time.Time
	lastErr   string
	removed   bool

	breaker *gobreaker.CircuitBreaker[net.Conn]
	conns   map[*conn]struct{}

	// rx is when bytes last came from the host on a proxied connection
	// (unix nanoseconds; 0: never), and busySince when the current run of
	// health check timeouts excused by that traffic began (see busy).
	rx        atomic.Int64
	busySince time.Time
	// gone: the host was marked down because its process is gone (a
	// refused or reset connection), not for failed checks alone.
	gone bool

	cancel context.CancelFunc // stops the checker
	kick   chan struct{}      // asks the checker for an immediate check
	cc     *grpc.ClientConn   // health check connection; owned by the checker
}

func (p *Proxy) newHost(c *cluster, ep endpointInfo) *host {
	h := &host{addr: ep.addr, cluster: c, ep: ep, conns: map[*conn]struct{}{}, kick: make(chan struct{}, 1)}
	bs := gobreaker.Settings{
		Name:        ep.addr,
		MaxRequests: 1,
		Timeout:     p.cfg.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= p.cfg.BreakerFailures },
		// A connect cancelled because the client went away says nothing
		// about the host.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			// Called under the breaker's own lock: log and count only.
			p.log.Warn("circuit breaker", "host", name, "from", from.String(), "to", to.String())
			p.m.breakerState.WithLabelValues(name).Set(float64(breakerGauge(to)))
		},
	}
	h.breaker = gobreaker.NewCircuitBreaker[net.Conn](bs)
	p.m.breakerState.WithLabelValues(ep.addr).Set(0)
	p.m.hostHealthy.WithLabelValues(c.name, ep.addr).Set(0)
	return h
}

func breakerGauge(s gobreaker.State) int {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	default:
		return 0
	}
}

// removeHostLocked stops a host's checker and closes its connections, or,
// with keepConns, keeps them open as an orphan of the cluster.
func (p *Proxy) removeHostLocked(h *host, why string, keepConns bool) {
	if h.removed {
		return
	}
	h.removed = true
	if h.cluster.hosts[h.addr] == h {
		delete(h.cluster.hosts, h.addr)
	}
	if h.cancel != nil {
		h.cancel()
	}
	if keepConns && len(h.conns) > 0 {
		h.cluster.orphans[h.addr] = h
		p.log.Info("upstream host removed; its client connections stay open", "cluster", h.cluster.name,
			"host", h.addr, "connections", len(h.conns), "why", why)
	} else {
		p.closeConnsLocked(h, why)
		delete(h.cluster.orphans, h.addr)
		p.log.Info("upstream host removed", "cluster", h.cluster.name, "host", h.addr, "why", why)
	}
	p.m.hostHealthy.DeleteLabelValues(h.cluster.name, h.addr)
	p.m.breakerState.DeleteLabelValues(h.addr)
	p.upstreamChange(h, "removed")
	if h.cluster.chosen == h {
		h.cluster.chosen = nil
	}
}

// reviveLocked brings back an orphan whose address returned to EDS, with its
// connections, breaker and last check results.
func (p *Proxy) reviveLocked(h *host, ep endpointInfo) {
	delete(h.cluster.orphans, h.addr)
	h.removed = false
	h.ep = ep
	h.cluster.hosts[h.addr] = h
	up := 0.0
	if h.state == stateUp {
		up = 1
	}
	p.m.hostHealthy.WithLabelValues(h.cluster.name, h.addr).Set(up)
	p.m.breakerState.WithLabelValues(h.addr).Set(float64(breakerGauge(h.breaker.State())))
	p.log.Info("upstream host back in EDS with its client connections", "cluster", h.cluster.name,
		"host", h.addr, "connections", len(h.conns))
}

// closeAllLocked closes every connection of c, orphans included.
func (p *Proxy) closeAllLocked(c *cluster, why string) {
	for _, h := range c.hosts {
		p.removeHostLocked(h, why, false)
	}
	for _, h := range c.orphans {
		p.closeConnsLocked(h, why)
		delete(c.orphans, h.addr)
	}
}

// rank orders hosts from most to least preferred for a new connection:
//
//  1. hosts the sidecar's own checks see as a (non-draining) primary, newest
//     epoch first;
//  2. other hosts not known to be down, by EDS health (healthy or unknown,
//     then degraded, then the rest), then EDS priority, checked-up before
//     unchecked;
//  3. hosts known to be down, in the same order (a last resort for retries).
//
// Ties go to the lower priority number, then the address.
func rank(hosts map[string]*host) []*host {
	out := make([]*host, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if ca, cb := a.class(), b.class(); ca != cb {
			return ca < cb
		}
		if a.class() == 0 && a.epoch != b.epoch {
			return a.epoch > b.epoch
		}
		if ha, hb := edsHealthClass(a.ep.health), edsHealthClass(b.ep.health); ha != hb {
			return ha < hb
		}
		if a.ep.priority != b.ep.priority {
			return a.ep.priority < b.ep.priority
		}
		if (a.state == stateUp) != (b.state == stateUp) {
			return a.state == stateUp
		}
		return a.addr < b.addr
	})
	return out
}

// class is the first ranking key of a host (see rank).
func (h *host) class() int {
	switch {
	case h.state == stateUp && h.role == "primary" && !h.draining:
		return 0
	case h.state != stateDown:
		return 1
	default:
		return 2
	}
}

func edsHealthClass(s corev3.HealthStatus) int {
	switch s {
	case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
		return 0
	case corev3.HealthStatus_DEGRADED:
		return 1
	default:
		return 2
	}
}

// recomputeLocked picks the chosen upstream and closes connections to hosts
// that are down or superseded by a newer primary.
func (p *Proxy) recomputeLocked(why string) {
	c := p.cluster
	if c == nil {
		return
	}
	if c.balanced() {
		// Every host not known to be down takes connections: there is no
		// one upstream to choose, only down hosts to leave.
		for _, h := range c.hosts {
			if h.state == stateDown && len(h.conns) > 0 {
				p.closeConnsLocked(h, "host down")
			}
		}
		for addr, h := range c.orphans {
			if len(h.conns) == 0 {
				delete(c.orphans, addr)
			}
		}
		p.notifyLocked()
		return
	}
	ranked := rank(c.hosts)
	var chosen *host
	definitive := false
	if len(ranked) > 0 && ranked[0].class() < 2 {
		chosen = ranked[0]
		definitive = chosen.class() == 0
	}
	if chosen != c.chosen || definitive != c.definitive {
		from, to := "", ""
		if c.chosen != nil {
			from = c.chosen.addr
		}
		if chosen != nil {
			to = chosen.addr
		}
		if from != to {
			if from != "" {
				p.m.failovers.Inc()
			}
			attrs := []any{"cluster", c.name, "from", from, "to", to, "why", why, "definitive", definitive}
			if chosen != nil {
				attrs = append(attrs, "role", chosen.role, "epoch", chosen.epoch, "name", chosen.name)
			}
			if to == "" {
				p.log.Warn("no upstream available", attrs...)
			} else {
				p.log.Info("upstream chosen", attrs...)
			}
		}
		c.chosen, c.definitive = chosen, definitive
	}
	for _, h := range c.hosts {
		if len(h.conns) == 0 {
			continue
		}
		switch {
		case h.state == stateDown && (h.gone || chosen != nil):
			p.closeConnsLocked(h, "host down")
		case h.state == stateDown:
			// Down for failed checks, not gone, and nowhere else to go:
			// its connections stay (cutting them would turn a slow host
			// into a dead one for every stream they carry); new ones
			// wait for a host. A primary chosen later supersedes them.
		case definitive && h != chosen:
			p.closeConnsLocked(h, "superseded by primary "+chosen.addr)
		}
	}
	for addr, h := range c.orphans {
		switch {
		case len(h.conns) == 0:
			delete(c.orphans, addr)
		case definitive:
			p.closeConnsLocked(h, "removed from EDS; primary is "+chosen.addr)
			delete(c.orphans, addr)
		}
	}
	p.notifyLocked()
}

// closeConnsLocked closes every client connection proxied to h.
func (p *Proxy) closeConnsLocked(h *host, why string) {
	if len(h.conns) == 0 {
		return
	}
	p.log.Info("closing client connections to host", "host", h.addr, "connections", len(h.conns), "why", why)
	for c := range h.conns {
		c.failover.Store(true)
		c.abort()
		delete(h.conns, c)
		p.m.closedConns.Inc()
	}
	p.countConns(h)
}

// hostFailed marks h down at once after a refused or reset connection and
// asks every checker of the cluster for an immediate check.
func (p *Proxy) hostFailed(h *host, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.removed {
		return
	}
	if h.state != stateDown {
		p.log.Warn("upstream host refused or reset a connection: marking it down", "host", h.addr, "err", err)
		h.state, h.gone = stateDown, true
		h.succ = 0
		h.lastErr = err.Error()
		p.m.hostHealthy.WithLabelValues(h.cluster.name, h.addr).Set(0)
		p.upstreamChange(h, "down")
		p.recomputeLocked("connection refused or reset by " + h.addr)
	}
	for _, o := range h.cluster.hosts {
		o.poke()
	}
}

// poke asks h's checker for an immediate check.
func (h *host) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// isRefusedOrReset reports whether err says the peer process is gone: a
// refused connect or a reset connection.
func isRefusedOrReset(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
