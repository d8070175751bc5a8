package auth

import (
	"sync"
	"time"
)

// ThrottleConfig says how failed logins are slowed. A key (an account id or
// a client address) may fail Free times; after that each attempt must wait
// Base, doubled per further failure, at most Max, after the last failure.
// A key's failures are forgotten Forget after its last failure, and a
// successful login forgets the account's (never the address's) failures.
type ThrottleConfig struct {
	// AccountFree is how many failures an account id may have unslowed.
	AccountFree int
	// AddressFree is how many failures one client address may have unslowed
	// (across all accounts it tries).
	AddressFree int
	// Base is the first wait once the free failures are used up.
	Base time.Duration
	// Max caps the wait; an attacker can hold an account at most this long
	// per failure, so it also bounds the lockout a victim suffers.
	Max time.Duration
	// Forget is how long after its last failure a key starts afresh.
	Forget time.Duration
}

// DefaultThrottleConfig: 5 free failures per account, 20 per address, then
// 1 s doubling to at most 1 min; forgotten after 15 min.
func DefaultThrottleConfig() ThrottleConfig {
	return ThrottleConfig{AccountFree: 5, AddressFree: 20, Base: time.Second, Max: time.Minute, Forget: 15 * time.Minute}
}

// maxThrottleKeys bounds the throttle's memory; past it, forgotten keys are
// swept, then the oldest half.
const maxThrottleKeys = 100_000

type failures struct {
	n    int
	last time.Time
}

// Throttle counts failed logins per account and per client address and
// says when the next attempt may be made. It is safe for concurrent use.
type Throttle struct {
	cfg ThrottleConfig

	mu   sync.Mutex
	keys map[string]failures // "a:<id>" or "ip:<address>"
}

// NewThrottle returns an empty throttle.
func NewThrottle(cfg ThrottleConfig) *Throttle {
	return &Throttle{cfg: cfg, keys: map[string]failures{}}
}

func (t *Throttle) wait(key string, free int, now time.Time) time.Duration {
	f, ok := t.keys[key]
	if !ok || now.Sub(f.last) >= t.cfg.Forget {
		return 0
	}
	over := f.n - free
	if over <= 0 {
		return 0
	}
	d := t.cfg.Base
	for i := 1; i < over && d < t.cfg.Max; i++ {
		d *= 2
	}
	d = min(d, t.cfg.Max)
	return max(f.last.Add(d).Sub(now), 0)
}

// Allow reports whether a login for account from address may be checked
// now; if not, the error is a *ThrottledError with the wait. An empty
// account (a token login) is checked against the address only.
func (t *Throttle) Allow(account, address string, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.wait("ip:"+address, t.cfg.AddressFree, now); d > 0 {
		return &ThrottledError{RetryAfter: d, Key: "address"}
	}
	if account == "" {
		return nil
	}
	if d := t.wait("a:"+account, t.cfg.AccountFree, now); d > 0 {
		return &ThrottledError{RetryAfter: d, Key: "account"}
	}
	return nil
}

// keys returns the keys an attempt counts against: the address, and the
// account unless it is empty (a token login names no account beforehand).
func keys(account, address string) []string {
	if account == "" {
		return []string{"ip:" + address}
	}
	return []string{"ip:" + address, "a:" + account}
}

// Failed records a failed login for account from address.
func (t *Throttle) Failed(account, address string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.keys) >= maxThrottleKeys {
		t.sweepLocked(now)
	}
	for _, k := range keys(account, address) {
		f := t.keys[k]
		if now.Sub(f.last) >= t.cfg.Forget {
			f.n = 0
		}
		f.n++
		f.last = now
		t.keys[k] = f
	}
}

// Succeeded forgets the account's failures (not the address's: one good
// account must not reset the count of a client that guesses others).
func (t *Throttle) Succeeded(account string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.keys, "a:"+account)
}

func (t *Throttle) sweepLocked(now time.Time) {
	for k, f := range t.keys {
		if now.Sub(f.last) >= t.cfg.Forget {
			delete(t.keys, k)
		}
	}
	if len(t.keys) < maxThrottleKeys {
		return
	}
	cut := now.Add(-t.cfg.Forget / 2)
	for k, f := range t.keys {
		if f.last.Before(cut) {
			delete(t.keys, k)
		}
	}
}
