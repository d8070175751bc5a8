package edge

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"
)

func TestClientAddr(t *testing.T) {
	p, err := ParseProxies("10.0.0.0/8, 192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"direct client", "198.51.100.1:5000", nil, "198.51.100.1"},
		{"direct client's forged header ignored", "198.51.100.1:5000", []string{"203.0.113.9"}, "198.51.100.1"},
		{"through a trusted proxy", "10.1.2.3:443", []string{"203.0.113.9"}, "203.0.113.9"},
		{"client-written entries left of the proxy's are ignored", "10.1.2.3:443", []string{"1.2.3.4, 203.0.113.9"}, "203.0.113.9"},
		{"two trusted hops", "192.0.2.7:80", []string{"203.0.113.9, 10.9.9.9"}, "203.0.113.9"},
		{"header lines joined", "10.1.2.3:443", []string{"1.1.1.1", "203.0.113.9"}, "203.0.113.9"},
		{"trusted proxy without a header", "10.1.2.3:443", nil, "10.1.2.3"},
		{"garbage entry stops the walk", "10.1.2.3:443", []string{"203.0.113.9, junk"}, "10.1.2.3"},
		{"ipv6 peer", "[2001:db8::1]:443", nil, "2001:db8::1"},
		{"mapped ipv4 peer", "[::ffff:198.51.100.1]:1", nil, "198.51.100.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tc.peer, Header: http.Header{}}
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := p.ClientAddr(r); got != netip.MustParseAddr(tc.want) {
				t.Errorf("ClientAddr = %v, want %s", got, tc.want)
			}
		})
	}
	var none Proxies
	r := &http.Request{RemoteAddr: "10.1.2.3:443", Header: http.Header{"X-Forwarded-For": {"203.0.113.9"}}}
	if got := none.ClientAddr(r); got != netip.MustParseAddr("10.1.2.3") {
		t.Errorf("no trusted proxies: ClientAddr = %v, want the peer", got)
	}
	if _, err := ParseProxies("10.0.0.0/8,nonsense"); !errors.Is(err, ErrBadProxy) {
		t.Errorf("ParseProxies(nonsense) = %v, want ErrBadProxy", err)
	}
}

// FuzzClientAddr: any peer and X-Forwarded-For give the peer or an address
// written in the header, never a panic; an untrusted peer is always the
// answer.
func FuzzClientAddr(f *testing.F) {
	f.Add("10.1.2.3:443", "203.0.113.9, 10.0.0.1")
	f.Add("198.51.100.1:1", "1.2.3.4")
	f.Add("[fe80::1%eth0]:1", "[::1], ::ffff:1.2.3.4,,")
	f.Add("", "")
	p, err := ParseProxies("10.0.0.0/8,fe80::/10")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, peer, xff string) {
		r := &http.Request{RemoteAddr: peer, Header: http.Header{"X-Forwarded-For": {xff}}}
		got := p.ClientAddr(r)
		pa := parseHostAddr(peer)
		if !pa.IsValid() || !p.trusted(pa) {
			if got != pa {
				t.Fatalf("untrusted peer %q: got %v", peer, got)
			}
			return
		}
		if !got.IsValid() {
			t.Fatalf("trusted peer %q gave no address", peer)
		}
	})
}
