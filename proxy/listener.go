package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/hachat/hachat/edge"
	"github.com/hachat/hachat/mtls"
)

// ErrNoUpstream is returned (and logged) when a client connection finds no
// upstream host to connect to.
var ErrNoUpstream = errors.New("no upstream host available")

// bufSize is the size of the pooled copy buffers.
const bufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// conn is one proxied client connection.
type conn struct {
	client   net.Conn
	upstream net.Conn
	once     sync.Once
	failover atomic.Bool // closed by the sidecar because its host went down or was superseded
	// rx, when set, is the upstream host's host.rx: the time of the last
	// bytes read from it on any of its connections.
	rx *atomic.Int64
}

// abort closes both sides; the copy loops end with an error.
func (c *conn) abort() {
	c.once.Do(func() {
		c.client.Close()
		c.upstream.Close()
	})
}

// serveListener accepts client connections until ctx ends.
func (p *Proxy) serveListener(ctx context.Context) error {
	var delay time.Duration
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Temporary failures (EMFILE, ...): back off a little.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept", "err", err, "retry_in", delay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(ctx, c)
		}()
	}
}

// handle proxies one client connection to the chosen upstream.
func (p *Proxy) handle(ctx context.Context, client net.Conn) {
	p.m.connsTotal.Inc()
	p.m.connsActive.Inc()
	defer p.m.connsActive.Dec()
	ctx, span := p.tracer.Start(ctx, "proxy.connection", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("client.address", client.RemoteAddr().String()),
			attribute.String("proxy.listener", p.ln.Addr().String())))
	defer span.End()

	if p.tls != nil && !p.cfg.Ingress {
		tc, err := p.handshake(ctx, client)
		if err != nil {
			client.Close()
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			p.m.tlsRefused.Inc()
			p.log.Warn("security: client refused at the TLS handshake", "security", "authn",
				"client", client.RemoteAddr().String(), "err", err)
			return
		}
		client = tc
		span.SetAttributes(attribute.String("client.identity", peerID(tc)))
	}
	h, upstream, err := p.connect(ctx)
	if err != nil {
		client.Close()
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		p.log.Warn("client connection dropped: no upstream", "client", client.RemoteAddr().String(), "err", err)
		return
	}
	c := &conn{client: client, upstream: upstream, rx: &h.rx}
	if !p.register(h, c) {
		// The host was superseded while we connected: start over once.
		upstream.Close()
		h, upstream, err = p.connect(ctx)
		if err != nil {
			client.Close()
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			return
		}
		c = &conn{client: client, upstream: upstream, rx: &h.rx}
		if !p.register(h, c) {
			client.Close()
			upstream.Close()
			span.SetStatus(codes.Error, "upstream superseded twice while connecting")
			return
		}
	}
	defer p.unregister(h, c)
	p.mu.Lock()
	name := h.name
	p.mu.Unlock()
	span.SetAttributes(attribute.String("upstream.address", h.addr), attribute.String("upstream.name", name))

	if p.cfg.Ingress && p.cfg.ProxyProtocol {
		if err := sendProxyHeader(client, upstream); err != nil {
			client.Close()
			upstream.Close()
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			p.log.Warn("client connection dropped: proxy protocol header not sent", "client", client.RemoteAddr().String(), "upstream", h.addr, "err", err)
			return
		}
	}
	up, down, upErr, upstreamFirst := p.pipe(c)
	span.SetAttributes(attribute.Int64("bytes.upstream", up), attribute.Int64("bytes.downstream", down))
	if c.failover.Load() {
		span.SetAttributes(attribute.Bool("closed_by_failover", true))
		return
	}
	switch {
	case upErr != nil && isRefusedOrReset(upErr):
		// The upstream process died under a live connection.
		span.RecordError(upErr)
		p.hostFailed(h, upErr)
	case upstreamFirst:
		// The upstream closed a connection the client had not: check it
		// now rather than at the next interval; a dead host is then
		// refused at once.
		h.poke()
	}
}

// connect dials the best upstream, retrying the next ones in rank order up to
// ConnectAttempts hosts. With no host known yet it waits for one until the
// cluster's connect timeout.
func (p *Proxy) connect(ctx context.Context) (*host, net.Conn, error) {
	timeout := defaultConnectTimeout
	deadline := time.Now().Add(timeout)
	tried := map[*host]bool{}
	var lastErr error = ErrNoUpstream
	for attempts := 0; attempts < p.cfg.ConnectAttempts; {
		p.mu.Lock()
		var next *host
		if c := p.cluster; c != nil {
			timeout = c.info.connectTimeout
			for _, h := range c.order() {
				if !tried[h] {
					next = h
					break
				}
			}
		}
		changed := p.changed
		p.mu.Unlock()
		if next == nil {
			if len(tried) > 0 {
				break
			}
			wait := time.Until(deadline)
			if wait <= 0 {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, nil, ctx.Err()
			case <-changed:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		tried[next] = true
		attempts++
		upstream, err := next.breaker.Execute(func() (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var d net.Dialer
			if p.cfg.Ingress && p.cfg.UpstreamSource.IsValid() {
				d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(p.cfg.UpstreamSource, 0))
			}
			c, err := d.DialContext(dctx, "tcp", next.addr)
			if err != nil {
				return nil, err
			}
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetNoDelay(true)
			}
			if p.tls == nil || p.cfg.Ingress {
				// Ingress passes the client's bytes through: TLS, if any,
				// is between the browser and the instance.
				return c, nil
			}
			// mTLS to the core within the same connect timeout; a refused
			// or reset handshake is a dead host like a refused connect.
			tc := tls.Client(c, p.tls.upstream)
			if err := tc.HandshakeContext(dctx); err != nil {
				c.Close()
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			return tc, nil
		})
		if err == nil {
			return next, upstream, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		lastErr = fmt.Errorf("connect %s: %w", next.addr, err)
		p.m.connectErrors.WithLabelValues(next.addr).Inc()
		if isRefusedOrReset(err) {
			p.hostFailed(next, err)
		}
	}
	return nil, nil, lastErr
}

// sendProxyHeader writes the PROXY protocol v2 header for client (its
// address and the edge's address it reached) to upstream, before any of the
// client's bytes, within handshakeTimeout.
func sendProxyHeader(client, upstream net.Conn) error {
	src, err := netip.ParseAddrPort(client.RemoteAddr().String())
	if err != nil {
		return fmt.Errorf("client address: %w", err)
	}
	dst, err := netip.ParseAddrPort(client.LocalAddr().String())
	if err != nil {
		return fmt.Errorf("listener address: %w", err)
	}
	b, err := edge.AppendProxyHeader(nil, edge.ProxyHeader{Source: src, Destination: dst})
	if err != nil {
		return err
	}
	_ = upstream.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	if _, err := upstream.Write(b); err != nil {
		return fmt.Errorf("write proxy protocol header: %w", err)
	}
	return upstream.SetWriteDeadline(time.Time{})
}

// handshake terminates mTLS on a client connection (ClientKinds only),
// within handshakeTimeout.
func (p *Proxy) handshake(ctx context.Context, client net.Conn) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	tc := tls.Server(client, p.tls.listen)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return tc, nil
}

// peerID is the SPIFFE ID of a TLS connection's verified peer, or "".
func peerID(c *tls.Conn) string {
	id, err := mtls.PeerIdentity(c.ConnectionState())
	if err != nil {
		return ""
	}
	return id.String()
}

// register attaches c to h unless h was removed, is down, or is no longer
// the host a definitive primary choice allows.
func (p *Proxy) register(h *host, c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.removed || h.state == stateDown || p.stopping {
		return false
	}
	if cl := h.cluster; cl.definitive && cl.chosen != h {
		return false
	}
	h.conns[c] = struct{}{}
	p.countConns(h)
	return true
}

func (p *Proxy) unregister(h *host, c *conn) {
	p.mu.Lock()
	delete(h.conns, c)
	p.countConns(h)
	if h.removed && len(h.conns) == 0 && h.cluster.orphans[h.addr] == h {
		delete(h.cluster.orphans, h.addr)
	}
	p.mu.Unlock()
	c.abort()
}

// pipe copies both ways until both directions are done. A clean EOF on one
// side half-closes the other (CloseWrite), so request/response protocols that
// shut down their sending side keep working; any error aborts both. It
// returns the bytes sent upstream and downstream, the error, if any, of
// reading from the upstream, and whether the upstream ended its side before
// the client did.
func (p *Proxy) pipe(c *conn) (up, down int64, upErr error, upstreamFirst bool) {
	var clientDone atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		var rerr, werr error
		up, rerr, werr = copyConn(c.upstream, c.client, p.m.bytesUp.Add)
		clientDone.Store(true)
		if rerr == nil && werr == nil {
			closeWrite(c.upstream)
			return
		}
		c.abort()
	}()
	var rerr, werr error
	count := p.m.bytesDown.Add
	if c.rx != nil {
		count = func(n float64) {
			p.m.bytesDown.Add(n)
			c.rx.Store(time.Now().UnixNano())
		}
	}
	down, rerr, werr = copyConn(c.client, c.upstream, count)
	upstreamFirst = !clientDone.Load()
	if rerr == nil && werr == nil {
		closeWrite(c.client)
	} else {
		c.abort()
	}
	<-done
	return up, down, rerr, upstreamFirst
}

// copyConn copies src to dst with a pooled buffer until EOF. It returns the
// bytes copied, the read error (nil on EOF) and the write error.
func copyConn(dst, src net.Conn, count func(float64)) (n int64, rerr, werr error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		nr, err := src.Read(buf)
		if nr > 0 {
			nw, ew := dst.Write(buf[:nr])
			n += int64(nw)
			count(float64(nw))
			if ew != nil {
				return n, nil, ew
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil, nil
			}
			return n, err, nil
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
