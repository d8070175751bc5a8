package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// minCheckGap spaces checks that immediate re-check requests trigger, so a
// burst of refused connects costs one check, not hundreds.
const minCheckGap = 5 * time.Millisecond

// fastInterval is the check interval while the cluster has no healthy
// primary (HAProxy calls it fastinter): a tenth of the interval, between
// 10ms and 25ms, never more than the interval itself. It is what bounds the
// time to see a backup's promotion after the primary died.
func fastInterval(interval time.Duration) time.Duration {
	f := min(max(interval/10, 10*time.Millisecond), 25*time.Millisecond)
	return min(f, interval)
}

// startChecker starts h's active health check loop under the run context.
// p.mu is held.
func (p *Proxy) startChecker(h *host) {
	ctx, cancel := context.WithCancel(p.runCtx)
	h.cancel = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		p.checkLoop(ctx, h)
	}()
}

// checkLoop checks h every interval (fast interval while the cluster has no
// healthy primary) and at once when poked: chatpb Chat/Status over one
// persistent gRPC connection, reading role and epoch. When that connection
// drops (a killed process closes its sockets) the loop checks at once, so a
// kill -9 is seen within milliseconds even without client traffic.
func (p *Proxy) checkLoop(ctx context.Context, h *host) {
	hc, _ := p.checkParams(h)
	if hc.Kind == checkTCP {
		p.tcpCheckLoop(ctx, h)
		return
	}
	creds := insecure.NewCredentials()
	if p.tls != nil {
		creds = p.tls.coreCreds()
	}
	cc, err := grpc.NewClient(h.addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: max(hc.Interval, 100*time.Millisecond)},
			MinConnectTimeout: hc.Timeout,
		}))
	if err != nil {
		p.log.Error("health check client", "host", h.addr, "err", err)
		return
	}
	defer cc.Close()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		watchConn(ctx, cc, h)
	}()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.watchServing(ctx, cc, h, hc.Service)
	}()
	client := chatpb.NewChatClient(cc)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-h.kick:
			if gap := time.Since(last); gap < minCheckGap {
				select {
				case <-ctx.Done():
					return
				case <-time.After(minCheckGap - gap):
				}
			}
		}
		hc, fast := p.checkParams(h)
		last = time.Now()
		cctx, cancel := context.WithTimeout(ctx, hc.Timeout)
		resp, err := client.Status(cctx, &chatpb.StatusRequest{})
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.report(h, resp, err)
		iv := hc.Interval
		if fast {
			iv = fastInterval(iv)
		}
		// 10% jitter keeps the sidecars of a cluster from checking in step.
		iv += time.Duration(rand.Int64N(int64(iv)/10 + 1))
		timer.Reset(iv)
	}
}

// watchConn pokes h's checker when the health check connection leaves READY.
func watchConn(ctx context.Context, cc *grpc.ClientConn, h *host) {
	state := cc.GetState()
	for cc.WaitForStateChange(ctx, state) {
		ns := cc.GetState()
		if state == connectivity.Ready && ns != connectivity.Ready {
			h.poke()
		}
		state = ns
	}
}

// watchServing follows the serving status of h's checked service
// (grpc.health.v1 Watch) over the health check connection and asks h's
// checker for an immediate check whenever it changes. A core's Chat service
// turns NOT_SERVING when it starts draining for a handover or steps down,
// and SERVING the moment it claims the primary role: at a switchover the
// sidecar checks the new primary at its claim instead of at its next
// interval, so client connections pinned to the old primary are moved
// (superseded by the newer epoch) within about a millisecond. Polled, they
// stayed up to an interval (25 ms) on the old primary, which refused every
// call and stream as not primary while the clients' backoff grew: the
// switchover pause's outliers of 30-85 ms. The check still decides (role
// and epoch come from Status); the watch only says when to look. A host
// that does not serve the health service (Unimplemented) is polled alone.
// The watch is reopened after a break, once the connection is ready again,
// at most once per interval.
func (p *Proxy) watchServing(ctx context.Context, cc *grpc.ClientConn, h *host, service string) {
	client := healthpb.NewHealthClient(cc)
	last := healthpb.HealthCheckResponse_ServingStatus(-1) // none seen yet
	for {
		opened := time.Now()
		st, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: service}, grpc.WaitForReady(true))
		for err == nil {
			var resp *healthpb.HealthCheckResponse
			if resp, err = st.Recv(); err == nil {
				if s := resp.GetStatus(); s != last {
					if last >= 0 {
						p.log.Debug("upstream host serving status changed: checking it now", "host", h.addr, "status", s.String())
						h.poke()
					}
					last = s
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented {
			p.log.Info("upstream host has no health service to watch: its role changes are seen at its checks only", "host", h.addr)
			return
		}
		hc, _ := p.checkParams(h)
		if wait := hc.Interval - time.Since(opened); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}

// checkParams returns the cluster's health check settings and whether the
// fast interval applies (no healthy primary chosen).
func (p *Proxy) checkParams(h *host) (healthCheck, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return h.cluster.info.hc, !h.cluster.definitive && !h.cluster.balanced()
}

// tcpCheckLoop checks h every interval, and at once when poked, by opening
// a TCP connection and closing it: the check of a balanced cluster, whose
// instances may serve TLS to browsers that the edge passes through
// untouched. A refused connect (a killed process) marks the host down at
// once; a host that accepts is up.
func (p *Proxy) tcpCheckLoop(ctx context.Context, h *host) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-h.kick:
			if gap := time.Since(last); gap < minCheckGap {
				select {
				case <-ctx.Done():
					return
				case <-time.After(minCheckGap - gap):
				}
			}
		}
		hc, _ := p.checkParams(h)
		last = time.Now()
		cctx, cancel := context.WithTimeout(ctx, hc.Timeout)
		var d net.Dialer
		c, err := d.DialContext(cctx, "tcp", h.addr)
		cancel()
		if err == nil {
			c.Close()
		}
		if ctx.Err() != nil {
			return
		}
		p.report(h, nil, err)
		iv := hc.Interval
		iv += time.Duration(rand.Int64N(int64(iv)/10 + 1))
		timer.Reset(iv)
	}
}

// report applies one check result to h.
func (p *Proxy) report(h *host, resp *chatpb.StatusResponse, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.removed {
		return
	}
	hc := h.cluster.info.hc
	h.lastCheck = time.Now()
	if err == nil {
		p.m.checks.WithLabelValues("ok").Inc()
		if !h.busySince.IsZero() {
			p.log.Info("upstream host answers its health checks again", "host", h.addr, "name", h.name,
				"after", time.Since(h.busySince).Round(time.Millisecond))
			h.busySince = time.Time{}
		}
		h.fail = 0
		h.succ++
		h.lastErr = ""
		changed := h.role != resp.GetRole() || h.epoch != resp.GetEpoch() || h.draining != resp.GetDraining()
		if changed && h.state == stateUp {
			p.log.Info("upstream host role changed", "host", h.addr, "name", resp.GetName(),
				"role", resp.GetRole(), "epoch", resp.GetEpoch(), "draining", resp.GetDraining(),
				"was_role", h.role, "was_epoch", h.epoch)
		}
		h.role, h.epoch, h.name, h.draining = resp.GetRole(), resp.GetEpoch(), resp.GetName(), resp.GetDraining()
		if resp == nil {
			// A TCP check: the name is the one the control plane published.
			h.name = h.ep.name
		}
		if h.state != stateUp && (h.state == stateUnknown || h.succ >= hc.Healthy) {
			h.state, h.gone = stateUp, false
			changed = true
			p.m.hostHealthy.WithLabelValues(h.cluster.name, h.addr).Set(1)
			p.upstreamChange(h, "up")
			p.log.Info("upstream host up", "host", h.addr, "name", h.name, "role", h.role, "epoch", h.epoch)
		}
		if changed {
			p.recomputeLocked("health check of " + h.addr)
		}
		return
	}
	if p.busy(h, err) {
		p.m.checks.WithLabelValues("busy").Inc()
		return
	}
	p.m.checks.WithLabelValues("failed").Inc()
	h.succ = 0
	h.fail++
	h.lastErr = err.Error()
	immediate := isGoneError(err)
	if h.state != stateDown && (immediate || h.state == stateUnknown || h.fail >= hc.Unhealthy) {
		h.state, h.gone = stateDown, immediate
		p.m.hostHealthy.WithLabelValues(h.cluster.name, h.addr).Set(0)
		p.upstreamChange(h, "down")
		p.log.Warn("upstream host down", "host", h.addr, "name", h.name, "failures", h.fail,
			"immediate", immediate, "err", err)
		p.recomputeLocked("health check of " + h.addr)
		for _, o := range h.cluster.hosts {
			if o != h {
				o.poke()
			}
		}
	}
}

// maxBusyGrace bounds how long health check timeouts of a host that keeps
// serving proxied traffic are excused (see busy).
const maxBusyGrace = 5 * time.Second

// busy reports whether a failed check of h is excused, and records the
// excuse: the check timed out (the host is not gone) while h, up, sent
// bytes on a proxied connection within the check's timeout, for at most
// maxBusyGrace in a row. A new primary that the resubscriptions of
// thousands of chats load right after a failover answers its streams late
// but answers them; marking it down would cut every one of them (its
// connections close) and start the storm again. A stopped or cut-off host
// sends nothing and is marked down as before, and a host that stays too
// slow is after maxBusyGrace. Called with p.mu held.
func (p *Proxy) busy(h *host, err error) bool {
	if h.state != stateUp || isGoneError(err) || !isTimeout(err) {
		return false
	}
	rx := h.rx.Load()
	if rx == 0 || time.Since(time.Unix(0, rx)) > h.cluster.info.hc.Timeout {
		return false
	}
	now := time.Now()
	if h.busySince.IsZero() {
		h.busySince = now
		p.log.Info("upstream host slow to answer its health check but serving traffic: not counted as a failure",
			"host", h.addr, "name", h.name, "err", err, "grace", maxBusyGrace)
	}
	return now.Sub(h.busySince) < maxBusyGrace
}

// isTimeout reports whether a check error is its deadline passing.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isGoneError reports whether a check error means the host's process is gone
// (refused or reset), which marks the host down without waiting for
// unhealthy_threshold.
func isGoneError(err error) bool {
	if isRefusedOrReset(err) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset")
}
