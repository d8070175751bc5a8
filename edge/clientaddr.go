package edge

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ErrBadProxy reports a trusted-proxy entry that is neither an address nor
// a CIDR prefix.
var ErrBadProxy = errors.New("bad trusted proxy")

// Proxies are the reverse proxies and load balancers in front of a server
// whose X-Forwarded-For header is believed. The zero value trusts none: the
// client is the TCP peer.
type Proxies struct {
	prefixes []netip.Prefix
}

// ParseProxies parses a comma-separated list of addresses and CIDR prefixes
// ("10.0.0.0/8,192.0.2.7"), or refuses it with ErrBadProxy.
func ParseProxies(list string) (Proxies, error) {
	var p Proxies
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if pfx, err := netip.ParsePrefix(s); err == nil {
			p.prefixes = append(p.prefixes, pfx.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Proxies{}, fmt.Errorf("%w: %q", ErrBadProxy, s)
		}
		a = a.Unmap()
		p.prefixes = append(p.prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	return p, nil
}

// trusted reports whether a is one of the proxies.
func (p Proxies) trusted(a netip.Addr) bool {
	for _, pfx := range p.prefixes {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}

// ClientAddr returns the address of the client that sent r: the TCP peer,
// or, when the peer is a trusted proxy, the right-most address of
// X-Forwarded-For that is not a trusted proxy (the entries to its left were
// written by the client itself and prove nothing). An unparsable peer gives
// the zero Addr.
func (p Proxies) ClientAddr(r *http.Request) netip.Addr {
	peer := parseHostAddr(r.RemoteAddr)
	if !peer.IsValid() || !p.trusted(peer) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a := parseHostAddr(strings.TrimSpace(hops[i]))
		if !a.IsValid() {
			break
		}
		client = a
		if !p.trusted(a) {
			break
		}
	}
	return client
}

// parseHostAddr parses "host:port" or a bare address, unmapping IPv4 in
// IPv6; the zero Addr when it is neither.
func parseHostAddr(s string) netip.Addr {
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return a.WithZone("").Unmap()
}
