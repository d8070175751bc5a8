package membership

import (
	"errors"
	"io"
	"log"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// cutTransport is memberlist's NetTransport that silently drops everything
// it would send to blocked addresses: a cut link, one direction per side.
type cutTransport struct {
	*memberlist.NetTransport
	mu      sync.Mutex
	blocked map[string]bool
}

func newCutTransport() (*cutTransport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"}, BindPort: 0, Logger: log.New(io.Discard, "", 0)})
	if err != nil {
		return nil, err
	}
	return &cutTransport{NetTransport: nt, blocked: map[string]bool{}}, nil
}

func (c *cutTransport) block(addr string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked[addr] = on
}

func (c *cutTransport) isBlocked(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked[addr]
}

var errCut = errors.New("link cut by test")

func (c *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if c.isBlocked(addr) {
		return time.Now(), nil
	}
	return c.NetTransport.WriteTo(b, addr)
}

func (c *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if c.isBlocked(a.Addr) {
		return time.Now(), nil
	}
	return c.NetTransport.WriteToAddress(b, a)
}

func (c *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if c.isBlocked(addr) {
		time.Sleep(timeout)
		return nil, errCut
	}
	return c.NetTransport.DialTimeout(addr, timeout)
}

func (c *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if c.isBlocked(a.Addr) {
		time.Sleep(timeout)
		return nil, errCut
	}
	return c.NetTransport.DialAddressTimeout(a, timeout)
}

// TestCutLinkIsNotAFailure cuts the link between a and b (the primary and
// the backup) while both still reach c (the witness): indirect probes
// through c must keep a and b alive for each other, over many probe
// rounds. Then c goes away too, and the cut becomes a real failure.
func TestCutLinkIsNotAFailure(t *testing.T) {
	var ta, tb *cutTransport
	a, b, c := threeNodes(t, func(cfg *Config) {
		cfg.transport = func() (memberlist.Transport, error) {
			tr, err := newCutTransport()
			switch {
			case ta == nil:
				ta = tr
			case tb == nil:
				tb = tr
			}
			return tr, err
		}
	})
	eventsA, cancelA := a.Subscribe()
	defer cancelA()
	eventsB, cancelB := b.Subscribe()
	defer cancelB()
	ta.block(b.Local().Addr, true)
	tb.block(a.Local().Addr, true)

	// Detection takes under 1s with the defaults; watch for 3s (15 probe
	// intervals, each of a and b probing the other every ~400ms).
	window := time.After(3 * time.Second)
	for done := false; !done; {
		select {
		case ev := <-eventsA:
			if ev.Member.Name == "b" && (ev.Type == EventFailed || ev.Type == EventLeft) {
				t.Fatalf("a declared b %s over a single cut link", ev.Type)
			}
		case ev := <-eventsB:
			if ev.Member.Name == "a" && (ev.Type == EventFailed || ev.Type == EventLeft) {
				t.Fatalf("b declared a %s over a single cut link", ev.Type)
			}
		case <-window:
			done = true
		}
	}
	if stateOf(a, "b") == "dead" || stateOf(b, "a") == "dead" || stateOf(c, "a") != "alive" || stateOf(c, "b") != "alive" {
		t.Fatalf("states after the cut: a sees b %s, b sees a %s, c sees a %s and b %s",
			stateOf(a, "b"), stateOf(b, "a"), stateOf(c, "a"), stateOf(c, "b"))
	}

	// Without the witness the cut is indistinguishable from a death.
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, eventsA, EventFailed, "b", 10*time.Second)
}
