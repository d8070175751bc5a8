package edge

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"
)

// ErrBadLimits reports unusable Limits.
var ErrBadLimits = errors.New("bad limits")

// defaultMaxClients bounds the client table when Limits.MaxClients is 0:
// about 100 bytes each, 10 MB at most.
const defaultMaxClients = 100_000

// Limits configures a Limiter: two token buckets, one per client and one
// for everyone. A bucket holds up to its burst in tokens, refills at its
// rate, and each allowed event takes one token from both.
type Limits struct {
	// ClientRate is the sustained events per second one client may cause;
	// 0 puts no limit per client.
	ClientRate float64
	// ClientBurst is how many events a client may cause at once (at least 1
	// when ClientRate is set).
	ClientBurst int
	// Rate is the sustained events per second of all clients together; 0
	// puts no overall limit.
	Rate float64
	// Burst is how many events all clients may cause at once (at least 1
	// when Rate is set).
	Burst int
	// MaxClients bounds how many clients are tracked (default 100000). When
	// the table is full, clients whose bucket has refilled are forgotten; a
	// client that still finds no room is held by the overall limit only.
	MaxClients int
}

// Scope says which limit refused an event.
type Scope int

// The scopes of a refusal.
const (
	// ScopeNone: the event was allowed.
	ScopeNone Scope = iota
	// ScopeClient: the client's own limit refused it.
	ScopeClient
	// ScopeGlobal: the overall limit refused it.
	ScopeGlobal
)

// String names the scope, for logs and metric labels.
func (s Scope) String() string {
	switch s {
	case ScopeClient:
		return "client"
	case ScopeGlobal:
		return "global"
	}
	return "none"
}

// Decision is a Limiter's answer to one event.
type Decision struct {
	// Allowed is true when the event may go ahead (its tokens are taken).
	Allowed bool
	// Scope is the limit that refused it (ScopeNone when allowed).
	Scope Scope
	// RetryAfter is how long until the refusing bucket holds a token again,
	// rounded up to whole seconds (at least 1 s): the Retry-After to send.
	RetryAfter time.Duration
}

// Limiter applies Limits to events (chat starts, logins) by client
// address. IPv4 clients are told apart by address, IPv6 clients by their
// /64 prefix (one subscriber's network). It is safe for concurrent use.
type Limiter struct {
	limits Limits
	now    func() time.Time

	mu        sync.Mutex
	global    bucket
	clients   map[netip.Prefix]*bucket
	lastSweep time.Time
}

// bucket is one token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// fill adds the tokens earned since the last fill, up to burst.
func (b *bucket) fill(now time.Time, rate float64, burst int) {
	if d := now.Sub(b.last); d > 0 {
		b.tokens = math.Min(float64(burst), b.tokens+d.Seconds()*rate)
	}
	b.last = now
}

// wait is how long until the bucket holds one token, in whole seconds.
func (b *bucket) wait(rate float64) time.Duration {
	s := math.Ceil((1 - b.tokens) / rate)
	if s < 1 || math.IsNaN(s) {
		s = 1
	}
	return time.Duration(s) * time.Second
}

// NewLimiter returns a Limiter for l; now is the clock (nil: time.Now).
func NewLimiter(l Limits, now func() time.Time) (*Limiter, error) {
	if l.ClientRate < 0 || l.Rate < 0 || math.IsNaN(l.ClientRate) || math.IsNaN(l.Rate) || math.IsInf(l.ClientRate, 0) || math.IsInf(l.Rate, 0) {
		return nil, fmt.Errorf("%w: rates must be finite and not negative", ErrBadLimits)
	}
	if l.ClientRate > 0 && l.ClientBurst < 1 || l.Rate > 0 && l.Burst < 1 {
		return nil, fmt.Errorf("%w: a burst must be at least 1 where its rate is set", ErrBadLimits)
	}
	if l.MaxClients <= 0 {
		l.MaxClients = defaultMaxClients
	}
	if now == nil {
		now = time.Now
	}
	lim := &Limiter{limits: l, now: now, clients: map[netip.Prefix]*bucket{}}
	lim.global = bucket{tokens: float64(l.Burst), last: now()}
	return lim, nil
}

// clientKey is the table key of a client address.
func clientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p
	}
	return netip.PrefixFrom(a, 32)
}

// Allow decides one event of the client at addr (the zero Addr is held by
// the overall limit only). A refused event takes no token from either
// bucket.
func (l *Limiter) Allow(addr netip.Addr) Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var cb *bucket
	if l.limits.ClientRate > 0 && addr.IsValid() {
		key := clientKey(addr)
		cb = l.clients[key]
		if cb == nil {
			if len(l.clients) >= l.limits.MaxClients && now.Sub(l.lastSweep) >= time.Second {
				l.sweep(now)
			}
			if len(l.clients) < l.limits.MaxClients {
				cb = &bucket{tokens: float64(l.limits.ClientBurst), last: now}
				l.clients[key] = cb
			}
		}
		if cb != nil {
			cb.fill(now, l.limits.ClientRate, l.limits.ClientBurst)
			if cb.tokens < 1 {
				return Decision{Scope: ScopeClient, RetryAfter: cb.wait(l.limits.ClientRate)}
			}
		}
	}
	if l.limits.Rate > 0 {
		l.global.fill(now, l.limits.Rate, l.limits.Burst)
		if l.global.tokens < 1 {
			return Decision{Scope: ScopeGlobal, RetryAfter: l.global.wait(l.limits.Rate)}
		}
		l.global.tokens--
	}
	if cb != nil {
		cb.tokens--
	}
	return Decision{Allowed: true}
}

// sweep forgets the clients whose bucket has refilled: they are as if new.
// It runs at most once a second, so that a full table under a flood from
// many addresses costs one pass a second, not one per event.
func (l *Limiter) sweep(now time.Time) {
	l.lastSweep = now
	for k, b := range l.clients {
		b.fill(now, l.limits.ClientRate, l.limits.ClientBurst)
		if b.tokens >= float64(l.limits.ClientBurst) {
			delete(l.clients, k)
		}
	}
}

// Clients returns how many clients the limiter tracks now.
func (l *Limiter) Clients() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}
