package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/telemetry"
)

// PresenceConfig tunes a Presence.
type PresenceConfig struct {
	// Interval between two readiness checks (default 250ms).
	Interval time.Duration
	// Failures is how many checks in a row must fail before the instance
	// withdraws, and Successes how many must pass before it registers
	// again (default 2 each).
	Failures, Successes int
	// OnChange, when set, is called after each withdrawal (false), and
	// when the check passes again (true) just before the new registration,
	// which a failure to join the cluster does not hold up (it is retried
	// at the next check); from the checking goroutine.
	OnChange func(up bool)
}

func (c *PresenceConfig) fill() {
	if c.Interval <= 0 {
		c.Interval = 250 * time.Millisecond
	}
	if c.Failures <= 0 {
		c.Failures = 2
	}
	if c.Successes <= 0 {
		c.Successes = 2
	}
}

// Presence keeps a stateless instance (webapi, interaction) registered in
// the gossip cluster while it can serve, and withdrawn while it cannot: an
// instance whose own path to the chat cores is down (its sidecar died)
// leaves the cluster, so that the control planes unpublish it and the edge
// sends its clients to the other instances; when the path is back it joins
// again. The process itself stays up: it still answers /healthz and
// finishes what it can.
type Presence struct {
	cfg   Config
	meta  Meta
	tel   *telemetry.Telemetry
	log   *slog.Logger
	pc    PresenceConfig
	ready func(context.Context) error

	registered prometheus.Gauge
	changes    *prometheus.CounterVec

	mu sync.Mutex
	m  *Membership // nil while withdrawn

	cancel context.CancelFunc
	done   chan struct{}
}

// StartPresence joins the gossip cluster as cfg.Name with meta, then checks
// ready every pc.Interval until Stop: after pc.Failures failed checks in a
// row it leaves the cluster, after pc.Successes passed ones it joins again.
func StartPresence(ctx context.Context, cfg Config, meta Meta, tel *telemetry.Telemetry, pc PresenceConfig, ready func(context.Context) error) (*Presence, error) {
	if tel == nil {
		tel = telemetry.Discard()
	}
	pc.fill()
	p := &Presence{
		cfg: cfg, meta: meta, tel: tel, pc: pc, ready: ready,
		log: tel.Logger.With("component", "presence", "node", cfg.Name),
		registered: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hachat_instance_registered",
			Help: "1 while this instance is registered in the gossip cluster (the edge may send it clients), 0 while withdrawn because it cannot reach the chat cores."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hachat_instance_presence_changes_total",
			Help: "Times this instance withdrew from (withdrawn) or joined again (registered) the gossip cluster."}, []string{"change"}),
		done: make(chan struct{}),
	}
	for _, c := range []prometheus.Collector{p.registered, p.changes} {
		if err := tel.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("presence metrics: %w", err)
		}
	}
	m, err := New(ctx, cfg, meta, tel)
	if err != nil {
		p.unregister()
		return nil, err
	}
	p.m = m
	p.registered.Set(1)
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	go p.loop(lctx)
	return p, nil
}

// Registered reports whether the instance is in the gossip cluster now.
func (p *Presence) Registered() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m != nil
}

func (p *Presence) loop(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(p.pc.Interval)
	defer t.Stop()
	fails, oks := 0, 0
	up := true // the path state last told to OnChange
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, p.pc.Interval)
		err := p.ready(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			fails, oks = fails+1, 0
		} else {
			fails, oks = 0, oks+1
		}
		registered := p.Registered()
		switch {
		case registered && fails >= p.pc.Failures:
			p.log.Warn("withdrawing from the gossip cluster: no path to the chat cores", "err", err, "failed_checks", fails)
			p.withdraw(ctx)
			if p.pc.OnChange != nil && up {
				p.pc.OnChange(false)
			}
			up = false
		case !registered && oks >= p.pc.Successes:
			// The path is back: the instance serves again at once, even
			// if joining the cluster fails now (retried at the next check).
			if p.pc.OnChange != nil && !up {
				p.pc.OnChange(true)
			}
			up = true
			m, err := New(ctx, p.cfg, p.meta, p.tel)
			if err != nil {
				p.log.Warn("register again in the gossip cluster", "err", err)
				continue
			}
			p.mu.Lock()
			p.m = m
			p.mu.Unlock()
			p.registered.Set(1)
			p.changes.WithLabelValues("registered").Inc()
			p.log.Info("registered again in the gossip cluster: the chat cores are reachable")
		}
	}
}

// withdraw leaves the cluster (the control planes unpublish the instance
// at once) and stops gossip.
func (p *Presence) withdraw(ctx context.Context) {
	p.mu.Lock()
	m := p.m
	p.m = nil
	p.mu.Unlock()
	if m == nil {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := m.Leave(lctx); err != nil && !errors.Is(err, ErrClosed) {
		p.log.Warn("leave the gossip cluster", "err", err)
	}
	_ = m.Shutdown()
	p.registered.Set(0)
	p.changes.WithLabelValues("withdrawn").Inc()
}

// Stop ends the checks and leaves the cluster.
func (p *Presence) Stop(ctx context.Context) {
	p.cancel()
	<-p.done
	p.withdraw(ctx)
	p.unregister()
}

func (p *Presence) unregister() {
	p.tel.Registry.Unregister(p.registered)
	p.tel.Registry.Unregister(p.changes)
}
