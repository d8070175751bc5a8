package edge

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func newTestLimiter(t *testing.T, l Limits) (*Limiter, *fakeClock) {
	t.Helper()
	c := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	lim, err := NewLimiter(l, c.now)
	if err != nil {
		t.Fatal(err)
	}
	return lim, c
}

func TestLimiterPerClient(t *testing.T) {
	lim, clock := newTestLimiter(t, Limits{ClientRate: 0.5, ClientBurst: 3})
	a, b := addr("192.0.2.1"), addr("192.0.2.2")
	for i := range 3 {
		if d := lim.Allow(a); !d.Allowed {
			t.Fatalf("start %d of the burst refused: %+v", i+1, d)
		}
	}
	d := lim.Allow(a)
	if d.Allowed || d.Scope != ScopeClient || d.RetryAfter != 2*time.Second {
		t.Fatalf("4th start = %+v, want refused by the client limit, retry after 2s", d)
	}
	// Another client is not held by a's limit.
	if d := lim.Allow(b); !d.Allowed {
		t.Fatalf("other client refused: %+v", d)
	}
	// A refused event takes no token: after 2 s exactly one more is allowed.
	clock.add(2 * time.Second)
	if d := lim.Allow(a); !d.Allowed {
		t.Fatalf("after the refill: %+v", d)
	}
	if d := lim.Allow(a); d.Allowed {
		t.Fatal("a second start after one token's refill was allowed")
	}
	// The bucket never holds more than the burst.
	clock.add(time.Hour)
	for i := range 3 {
		if !lim.Allow(a).Allowed {
			t.Fatalf("start %d after an idle hour refused", i+1)
		}
	}
	if lim.Allow(a).Allowed {
		t.Fatal("more than the burst after an idle hour")
	}
}

func TestLimiterGlobal(t *testing.T) {
	lim, clock := newTestLimiter(t, Limits{ClientRate: 100, ClientBurst: 100, Rate: 1, Burst: 2})
	if !lim.Allow(addr("192.0.2.1")).Allowed || !lim.Allow(addr("192.0.2.2")).Allowed {
		t.Fatal("burst refused")
	}
	d := lim.Allow(addr("192.0.2.3"))
	if d.Allowed || d.Scope != ScopeGlobal || d.RetryAfter != time.Second {
		t.Fatalf("3rd start = %+v, want refused by the global limit", d)
	}
	clock.add(time.Second)
	if !lim.Allow(addr("192.0.2.3")).Allowed {
		t.Fatal("refused after the global refill")
	}
	// An address-less request is held by the global limit only.
	if lim.Allow(netip.Addr{}).Allowed {
		t.Fatal("global limit ignored for a request without address")
	}
}

func TestLimiterIPv6Prefix(t *testing.T) {
	lim, _ := newTestLimiter(t, Limits{ClientRate: 1, ClientBurst: 1})
	if !lim.Allow(addr("2001:db8:1:2::1")).Allowed {
		t.Fatal("first refused")
	}
	if lim.Allow(addr("2001:db8:1:2::ffff")).Allowed {
		t.Fatal("another address of the same /64 is another client")
	}
	if !lim.Allow(addr("2001:db8:1:3::1")).Allowed {
		t.Fatal("another /64 refused")
	}
	if !lim.Allow(addr("::ffff:192.0.2.9")).Allowed || lim.Allow(addr("192.0.2.9")).Allowed {
		t.Fatal("IPv4-mapped and plain IPv4 must be the same client")
	}
}

func TestLimiterTableBounded(t *testing.T) {
	lim, clock := newTestLimiter(t, Limits{ClientRate: 1, ClientBurst: 1, MaxClients: 4})
	for i := range 10 {
		lim.Allow(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
	}
	if n := lim.Clients(); n != 4 {
		t.Fatalf("tracking %d clients, want the bound 4", n)
	}
	// Once their buckets refill, old clients are swept to make room.
	clock.add(2 * time.Second)
	if !lim.Allow(addr("10.1.0.1")).Allowed {
		t.Fatal("new client refused")
	}
	if lim.Allow(addr("10.1.0.1")).Allowed {
		t.Fatal("the new client is not tracked after the sweep")
	}
}

func TestNewLimiterRefusesBadLimits(t *testing.T) {
	for _, l := range []Limits{{ClientRate: -1}, {ClientRate: 1}, {Rate: 1, Burst: 0}, {Rate: -0.5, Burst: 1}} {
		if _, err := NewLimiter(l, nil); !errors.Is(err, ErrBadLimits) {
			t.Errorf("%+v: err = %v, want ErrBadLimits", l, err)
		}
	}
	lim, err := NewLimiter(Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if !lim.Allow(addr("192.0.2.1")).Allowed {
			t.Fatal("zero limits refused an event")
		}
	}
}
