package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry/telemetrytest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func mustHeader(t testing.TB, h ProxyHeader) []byte {
	t.Helper()
	b, err := AppendProxyHeader(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadProxyHeader(t *testing.T) {
	v4 := ProxyHeader{Source: netip.MustParseAddrPort("192.0.2.7:51000"), Destination: netip.MustParseAddrPort("198.51.100.1:8080")}
	v6 := ProxyHeader{Source: netip.MustParseAddrPort("[2001:db8::7]:51000"), Destination: netip.MustParseAddrPort("[2001:db8::1]:443")}
	good4 := mustHeader(t, v4)
	withTLV := append(bytes.Clone(good4[:14]), 0, 12+5)
	withTLV = append(append(withTLV, good4[16:]...), 0x04, 0, 2, 'o', 'k')
	tests := []struct {
		name string
		in   []byte
		want ProxyHeader
		err  error
	}{
		{"ipv4", good4, v4, nil},
		{"ipv6", mustHeader(t, v6), v6, nil},
		{"local", mustHeader(t, ProxyHeader{Local: true}), ProxyHeader{Local: true}, nil},
		{"tlv skipped", withTLV, v4, nil},
		{"empty", nil, ProxyHeader{}, io.EOF},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ProxyHeader{}, ErrProxyHeaderMissing},
		{"tls hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, ProxyHeader{}, ErrProxyHeaderMissing},
		{"short non-header", []byte("GET /"), ProxyHeader{}, ErrProxyHeaderMissing},
		{"version 1", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 8080\r\n"), ProxyHeader{}, ErrProxyHeaderMalformed},
		{"truncated signature", good4[:8], ProxyHeader{}, ErrProxyHeaderMalformed},
		{"truncated addresses", good4[:20], ProxyHeader{}, ErrProxyHeaderMalformed},
		{"version 3", append(append(bytes.Clone(good4[:12]), 0x31), good4[13:]...), ProxyHeader{}, ErrProxyHeaderMalformed},
		{"udp", append(append(bytes.Clone(good4[:13]), 0x12), good4[14:]...), ProxyHeader{}, ErrProxyHeaderMalformed},
		{"unspec proxy", append(append(bytes.Clone(good4[:13]), 0x00), good4[14:]...), ProxyHeader{}, ErrProxyHeaderMalformed},
		{"length under addresses", append(append(bytes.Clone(good4[:14]), 0, 8), good4[16:]...), ProxyHeader{}, ErrProxyHeaderMalformed},
		{"length over cap", append(append(bytes.Clone(good4[:14]), 0xff, 0xff), good4[16:]...), ProxyHeader{}, ErrProxyHeaderMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := bytes.Clone(tt.in)
			if tt.err == nil {
				in = append(in, "after"...)
			}
			r := bytes.NewReader(in)
			h, err := ReadProxyHeader(r)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if h != tt.want {
				t.Fatalf("header %+v, want %+v", h, tt.want)
			}
			if err == nil {
				if rest, _ := io.ReadAll(r); string(rest) != "after" {
					t.Fatalf("read past the header: %q left", rest)
				}
			}
		})
	}
}

func TestAppendProxyHeaderMixedFamilies(t *testing.T) {
	_, err := AppendProxyHeader(nil, ProxyHeader{Source: netip.MustParseAddrPort("192.0.2.7:1"), Destination: netip.MustParseAddrPort("[2001:db8::1]:2")})
	if !errors.Is(err, ErrProxyHeaderMalformed) {
		t.Fatalf("err %v", err)
	}
	// IPv4 in IPv6 is IPv4.
	b := mustHeader(t, ProxyHeader{Source: netip.MustParseAddrPort("[::ffff:192.0.2.7]:1"), Destination: netip.MustParseAddrPort("198.51.100.1:2")})
	if b[13] != proxyV2TCP4 || len(b) != 16+12 {
		t.Fatalf("mapped address encoded as %#x, %d bytes", b[13], len(b))
	}
}

func FuzzReadProxyHeader(f *testing.F) {
	f.Add(mustHeader(f, ProxyHeader{Source: netip.MustParseAddrPort("192.0.2.7:51000"), Destination: netip.MustParseAddrPort("198.51.100.1:8080")}))
	f.Add(mustHeader(f, ProxyHeader{Source: netip.MustParseAddrPort("[2001:db8::7]:1"), Destination: netip.MustParseAddrPort("[2001:db8::1]:2")}))
	f.Add(mustHeader(f, ProxyHeader{Local: true}))
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := ReadProxyHeader(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, ErrProxyHeaderMissing) && !errors.Is(err, ErrProxyHeaderMalformed) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		used := len(in) - r.Len()
		if used < 16 || used > 16+proxyV2MaxLen || !bytes.Equal(in[:12], proxyV2Sig) {
			t.Fatalf("accepted %d bytes %q", used, in[:used])
		}
		if h.Local {
			return
		}
		// A parsed PROXY header encodes back to its first 16+addresses bytes,
		// the length field aside (TLVs are dropped).
		b, err := AppendProxyHeader(nil, h)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", h, err)
		}
		if !bytes.Equal(b[:14], in[:14]) || !bytes.Equal(b[16:], in[16:len(b)]) {
			t.Fatalf("round trip %x != %x", b, in[:len(b)])
		}
	})
}

// ppServer is an HTTP server behind a ProxyProtocolListener trusting
// trusted; it answers with the request's RemoteAddr.
func ppServer(t *testing.T, trusted string, tlsOn bool) (addr string, l *ProxyProtocolListener, logs *telemetrytest.LogBuffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseProxies(trusted)
	if err != nil {
		t.Fatal(err)
	}
	logs = &telemetrytest.LogBuffer{}
	l, err = NewProxyProtocolListener(ln, p, slog.New(slog.NewTextHandler(logs, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	}))
	srv.Listener = l
	if tlsOn {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return ln.Addr().String(), l, logs
}

// exchange dials addr from the local address from, writes pre (a header,
// or nothing), then an HTTP request (over TLS when tlsOn), and returns the
// answer's body or the error.
func exchange(t *testing.T, addr, from string, pre []byte, tlsOn bool) (string, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pre); err != nil {
		return "", err
	}
	var rw net.Conn = c
	if tlsOn {
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			return "", err
		}
		rw = tc
	}
	if _, err := io.WriteString(rw, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(rw)
	if err != nil && len(b) == 0 {
		return "", err
	}
	if len(b) == 0 {
		return "", io.EOF
	}
	_, body, _ := strings.Cut(string(b), "\r\n\r\n")
	return body, nil
}

// TestProxyProtocolListener: the trust rules and both refusals, with and
// without TLS after the header.
func TestProxyProtocolListener(t *testing.T) {
	client := ProxyHeader{Source: netip.MustParseAddrPort("203.0.113.9:40000"), Destination: netip.MustParseAddrPort("127.0.0.1:8080")}
	hdr := mustHeader(t, client)
	tests := []struct {
		name    string
		from    string
		pre     []byte
		want    string // body: the RemoteAddr; "" refused
		result  string
		warning string
	}{
		{"trusted edge with header", "127.0.0.2", hdr, "203.0.113.9:40000", "proxied", ""},
		{"trusted edge, local header", "127.0.0.2", mustHeader(t, ProxyHeader{Local: true}), "127.0.0.2:", "local", ""},
		{"trusted edge without header", "127.0.0.2", nil, "", "refused_missing", "no header from a trusted edge"},
		{"trusted edge, version 1 header", "127.0.0.2", []byte("PROXY TCP4 203.0.113.9 127.0.0.1 40000 8080\r\n"), "", "refused_malformed", "version 1"},
		{"untrusted peer with header", "127.0.0.3", hdr, "", "refused_untrusted", "header from an untrusted peer"},
		{"untrusted peer with version 1 header", "127.0.0.3", []byte("PROXY TCP4 203.0.113.9 127.0.0.1 40000 8080\r\n"), "", "refused_untrusted", "header from an untrusted peer"},
		{"untrusted peer without header", "127.0.0.3", nil, "127.0.0.3:", "direct", ""},
	}
	for _, tlsOn := range []bool{false, true} {
		for _, tt := range tests {
			name := tt.name
			if tlsOn {
				name += " tls"
			}
			t.Run(name, func(t *testing.T) {
				addr, l, logs := ppServer(t, "127.0.0.2/32", tlsOn)
				body, err := exchange(t, addr, tt.from, tt.pre, tlsOn)
				if tt.want == "" {
					if err == nil {
						t.Fatalf("served %q, want refused", body)
					}
				} else if err != nil || !strings.HasPrefix(body, tt.want) {
					t.Fatalf("body %q err %v, want RemoteAddr %s...", body, err, tt.want)
				}
				deadline := time.Now().Add(5 * time.Second)
				for testutil.ToFloat64(l.conns.WithLabelValues(tt.result)) != 1 {
					if time.Now().After(deadline) {
						t.Fatalf("%s never counted", tt.result)
					}
					time.Sleep(5 * time.Millisecond)
				}
				if tt.warning != "" && !strings.Contains(logs.String(), tt.warning) {
					t.Fatalf("no log line %q in %s", tt.warning, logs)
				}
				if tt.warning == "" && strings.Contains(logs.String(), "refused") {
					t.Fatalf("unexpected refusal logged: %s", logs)
				}
			})
		}
	}
}

// TestProxyProtocolEmptyConnection: a TCP check from a trusted edge
// (connect, close) is no refusal.
func TestProxyProtocolEmptyConnection(t *testing.T) {
	addr, l, logs := ppServer(t, "127.0.0.2", false)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(l.conns.WithLabelValues("empty")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("empty connection never counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if strings.Contains(logs.String(), "refused") {
		t.Fatalf("check logged as refused: %s", logs)
	}
}
