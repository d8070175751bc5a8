package edge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// PROXY protocol version 2 (haproxy's proxy-protocol.txt): a 16-byte fixed
// part (signature, version and command, family, length) and the addresses.
// hachat's edge sends it at the start of each connection it passes to a
// webapi or interaction instance, so that the instance sees the client's
// address instead of the edge's.
var (
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
	proxyV1Sig = []byte("PROXY ")
)

const (
	proxyV2Local = 0x20 // version 2, LOCAL: the proxy's own connection
	proxyV2Proxy = 0x21 // version 2, PROXY: a relayed client connection
	proxyV2TCP4  = 0x11
	proxyV2TCP6  = 0x21
	// proxyV2MaxLen caps the address block (addresses plus TLVs) a
	// trusted edge may send; hachat's edge sends no TLVs.
	proxyV2MaxLen = 512
	// proxyHeaderTimeout bounds the wait for a trusted edge's header.
	proxyHeaderTimeout = 5 * time.Second
)

// Errors of the PROXY protocol listener; a refused connection is closed and
// its Read returns one of them.
var (
	// ErrProxyHeaderMissing: a trusted edge's connection did not start
	// with a version 2 header.
	ErrProxyHeaderMissing = errors.New("proxy protocol: no header from a trusted edge")
	// ErrProxyHeaderUntrusted: a peer that is not a trusted edge sent a
	// header (version 1 or 2).
	ErrProxyHeaderUntrusted = errors.New("proxy protocol: header from an untrusted peer")
	// ErrProxyHeaderMalformed: the header is not a well-formed version 2
	// TCP header.
	ErrProxyHeaderMalformed = errors.New("proxy protocol: malformed header")
)

// ProxyHeader is a PROXY protocol version 2 header.
type ProxyHeader struct {
	// Local marks the proxy's own connection (a health check): no client.
	Local bool
	// Source is the client's address, Destination the address it
	// connected to (the edge's listener); both zero when Local.
	Source, Destination netip.AddrPort
}

// AppendProxyHeader appends h, encoded as version 2, to b. A PROXY header
// needs Source and Destination of the same family (IPv4 in IPv6 counts as
// IPv4).
func AppendProxyHeader(b []byte, h ProxyHeader) ([]byte, error) {
	b = append(b, proxyV2Sig...)
	if h.Local {
		return append(b, proxyV2Local, 0, 0, 0), nil
	}
	src := netip.AddrPortFrom(h.Source.Addr().Unmap(), h.Source.Port())
	dst := netip.AddrPortFrom(h.Destination.Addr().Unmap(), h.Destination.Port())
	switch {
	case src.Addr().Is4() && dst.Addr().Is4():
		b = append(b, proxyV2Proxy, proxyV2TCP4, 0, 12)
	case src.Addr().Is6() && dst.Addr().Is6():
		b = append(b, proxyV2Proxy, proxyV2TCP6, 0, 36)
	default:
		return nil, fmt.Errorf("%w: addresses %v and %v", ErrProxyHeaderMalformed, h.Source, h.Destination)
	}
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port()), nil
}

// ReadProxyHeader reads one version 2 header from r, strictly: the
// signature, version 2, the LOCAL or PROXY command, for PROXY the TCP over
// IPv4 or IPv6 family, and a length that holds the addresses and at most
// proxyV2MaxLen bytes (TLVs are skipped). It reads exactly the header's
// bytes. A stream that ends before any byte gives io.EOF.
func ReadProxyHeader(r io.Reader) (ProxyHeader, error) {
	var fixed [16]byte
	if n, err := io.ReadFull(r, fixed[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return ProxyHeader{}, io.EOF
		}
		if bytes.HasPrefix(proxyV2Sig, fixed[:min(n, len(proxyV2Sig))]) {
			return ProxyHeader{}, fmt.Errorf("%w: truncated: %w", ErrProxyHeaderMalformed, err)
		}
		return ProxyHeader{}, ErrProxyHeaderMissing
	}
	if !bytes.Equal(fixed[:12], proxyV2Sig) {
		if bytes.HasPrefix(fixed[:], proxyV1Sig) {
			return ProxyHeader{}, fmt.Errorf("%w: version 1 (text) header; the edge sends version 2", ErrProxyHeaderMalformed)
		}
		return ProxyHeader{}, ErrProxyHeaderMissing
	}
	n := int(binary.BigEndian.Uint16(fixed[14:]))
	if n > proxyV2MaxLen {
		return ProxyHeader{}, fmt.Errorf("%w: length %d over %d", ErrProxyHeaderMalformed, n, proxyV2MaxLen)
	}
	var h ProxyHeader
	var addrLen int
	switch fixed[12] {
	case proxyV2Local:
		h.Local = true
	case proxyV2Proxy:
		switch fixed[13] {
		case proxyV2TCP4:
			addrLen = 12
		case proxyV2TCP6:
			addrLen = 36
		default:
			return ProxyHeader{}, fmt.Errorf("%w: family %#x (want TCP over IPv4 or IPv6)", ErrProxyHeaderMalformed, fixed[13])
		}
		if n < addrLen {
			return ProxyHeader{}, fmt.Errorf("%w: length %d under %d", ErrProxyHeaderMalformed, n, addrLen)
		}
	default:
		return ProxyHeader{}, fmt.Errorf("%w: version and command %#x", ErrProxyHeaderMalformed, fixed[12])
	}
	rest := make([]byte, n)
	if _, err := io.ReadFull(r, rest); err != nil {
		return ProxyHeader{}, fmt.Errorf("%w: truncated: %w", ErrProxyHeaderMalformed, err)
	}
	if h.Local {
		return h, nil
	}
	ipLen := (addrLen - 4) / 2
	src, _ := netip.AddrFromSlice(rest[:ipLen])
	dst, _ := netip.AddrFromSlice(rest[ipLen : 2*ipLen])
	h.Source = netip.AddrPortFrom(src.Unmap(), binary.BigEndian.Uint16(rest[2*ipLen:]))
	h.Destination = netip.AddrPortFrom(dst.Unmap(), binary.BigEndian.Uint16(rest[2*ipLen+2:]))
	return h, nil
}

// ProxyProtocolListener is a listener in front of which a PROXY protocol
// edge may stand. A connection from a trusted edge must start with a
// version 2 header; its RemoteAddr is then the client's address the header
// carries (a LOCAL header keeps the edge's). A connection from any other
// peer must not send one. Either rule broken, the connection is refused:
// closed, with a warning log line and a count. The header is read on the
// connection's first Read or RemoteAddr, never in Accept, so a slow peer
// holds up only its own connection; TLS, if any, wraps this listener (the
// header precedes the handshake).
type ProxyProtocolListener struct {
	net.Listener
	trusted Proxies
	log     *slog.Logger
	conns   *prometheus.CounterVec
}

// NewProxyProtocolListener wraps ln, trusting the edges in trusted (none:
// every peer is a direct client and a header is refused), and registers
// hachat_edge_proxy_protocol_connections_total on reg.
func NewProxyProtocolListener(ln net.Listener, trusted Proxies, log *slog.Logger, reg prometheus.Registerer) (*ProxyProtocolListener, error) {
	conns := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hachat_edge_proxy_protocol_connections_total",
		Help: "Connections by PROXY protocol outcome: proxied (trusted edge, client address taken), local (trusted edge's own), direct (untrusted peer, no header), empty (closed before a byte), refused_untrusted (header from an untrusted peer), refused_missing (trusted edge, no header), refused_malformed.",
	}, []string{"result"})
	if err := reg.Register(conns); err != nil {
		return nil, fmt.Errorf("register proxy protocol metrics: %w", err)
	}
	for _, r := range []string{"proxied", "local", "direct", "empty", "refused_untrusted", "refused_missing", "refused_malformed"} {
		conns.WithLabelValues(r)
	}
	return &ProxyProtocolListener{Listener: ln, trusted: trusted, log: log, conns: conns}, nil
}

// Accept returns the next connection, wrapped; it reads nothing from it.
func (l *ProxyProtocolListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &proxyConn{Conn: c, l: l, remote: c.RemoteAddr(),
		trusted: l.trusted.trusted(parseHostAddr(c.RemoteAddr().String()))}, nil
}

// proxyConn is an accepted connection whose start is checked once.
type proxyConn struct {
	net.Conn
	l       *ProxyProtocolListener
	trusted bool // the peer is a trusted edge
	once    sync.Once
	remote  net.Addr
	err     error
	buf     []byte // bytes read while checking, not yet returned by Read
}

// check reads the header of a trusted edge's connection, or looks at the
// first bytes of another peer's for a header, and refuses a breach.
func (c *proxyConn) check() {
	var result string
	if c.trusted {
		result = c.readHeader()
	} else {
		result = c.sniff()
	}
	c.l.conns.WithLabelValues(result).Inc()
	if !strings.HasPrefix(result, "refused") {
		return
	}
	c.l.log.Warn("security: connection refused: "+c.err.Error(), "security", "proxy_protocol",
		"peer", c.Conn.RemoteAddr().String(), "result", result,
		"hint", "--proxy-protocol-from lists the edges that send a PROXY protocol header")
	c.Conn.Close()
}

// readHeader reads a trusted edge's header, within proxyHeaderTimeout.
func (c *proxyConn) readHeader() string {
	_ = c.Conn.SetReadDeadline(time.Now().Add(proxyHeaderTimeout))
	h, err := ReadProxyHeader(c.Conn)
	_ = c.Conn.SetReadDeadline(time.Time{})
	switch {
	case errors.Is(err, io.EOF):
		// A TCP check: connected and closed without a byte.
		c.err = io.EOF
		return "empty"
	case errors.Is(err, ErrProxyHeaderMissing):
		c.err = err
		return "refused_missing"
	case err != nil:
		c.err = err
		return "refused_malformed"
	case h.Local:
		return "local"
	}
	c.remote = net.TCPAddrFromAddrPort(h.Source)
	return "proxied"
}

// sniff reads a direct peer's first bytes until they differ from both
// signatures (kept for Read) or hold one of them whole (refused).
func (c *proxyConn) sniff() string {
	var b [16]byte
	for n := 0; ; {
		m, err := c.Conn.Read(b[n:])
		n += m
		c.buf = b[:n]
		v2 := bytes.HasPrefix(proxyV2Sig, c.buf[:min(n, len(proxyV2Sig))])
		v1 := bytes.HasPrefix(proxyV1Sig, c.buf[:min(n, len(proxyV1Sig))])
		switch {
		case n > 0 && (v2 && n >= len(proxyV2Sig) || v1 && n >= len(proxyV1Sig)):
			c.buf = nil
			c.err = ErrProxyHeaderUntrusted
			return "refused_untrusted"
		case n > 0 && !v2 && !v1:
			return "direct"
		case err != nil:
			if n == 0 {
				c.err = err
				if errors.Is(err, io.EOF) {
					return "empty"
				}
			}
			return "direct"
		}
	}
}

// RemoteAddr is the client's address: the one a trusted edge's header
// carries (read now if it was not yet, within proxyHeaderTimeout), else
// the peer's. A direct peer's bytes are looked at on the first Read only,
// under the deadlines of the server that reads them.
func (c *proxyConn) RemoteAddr() net.Addr {
	if !c.trusted {
		return c.remote
	}
	c.once.Do(c.check)
	return c.remote
}

// Read returns the connection's bytes after the header; a refused
// connection's error.
func (c *proxyConn) Read(p []byte) (int, error) {
	c.once.Do(c.check)
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(p)
}
