package harness

import (
	"net"
	"sync"
	"testing"

	"github.com/hachat/hachat/demo"
)

// Link is a TCP relay on loopback that a test puts between two parts (give
// one part Link.Addr instead of the other's address) so that it can cut
// just that link while both parts stay up and reachable by everyone else.
type Link struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewLink starts a relay to target on a free loopback port; it closes when
// the test ends.
func NewLink(t testing.TB, target string) *Link {
	t.Helper()
	addr, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("link listen: %v", err)
	}
	l := &Link{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	t.Cleanup(l.Close)
	return l
}

// Addr is the address the relay listens on.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Cut breaks the link like a dead network path: open connections go
// silent (their bytes are dropped, nothing is closed, so the ends learn it
// only from their own timeouts), and new connections are accepted and then
// ignored.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = true
}

// Reset breaks the link like a refused path: every open connection is closed
// at once and new ones are closed on arrival.
func (l *Link) Reset() {
	l.mu.Lock()
	l.cut = true
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Heal restores the link: connections made from now on are relayed again.
// Connections that were cut stay dead (as TCP connections over a path that
// dropped their segments would), so the ends reconnect.
func (l *Link) Heal() {
	l.mu.Lock()
	l.cut = false
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Close stops the relay and closes every connection.
func (l *Link) Close() {
	l.ln.Close()
	l.Reset()
	l.wg.Wait()
}

func (l *Link) isCut() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cut
}

func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns[c] = struct{}{}
	return !l.cut
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		in, err := l.ln.Accept()
		if err != nil {
			return
		}
		if !l.track(in) {
			continue // cut: accepted and ignored (closed on Heal or Close)
		}
		out, err := net.Dial("tcp", l.target)
		if err != nil {
			in.Close()
			continue
		}
		if !l.track(out) {
			in.Close()
			out.Close()
			continue
		}
		l.wg.Add(2)
		go l.pipe(out, in)
		go l.pipe(in, out)
	}
}

// pipe copies src to dst until either fails; while the link is cut the
// bytes are read and dropped.
func (l *Link) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.isCut() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: the other direction follows
		}
	}
}
