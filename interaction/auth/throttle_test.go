package auth

import (
	"errors"
	"testing"
	"time"
)

func TestThrottlePerAccount(t *testing.T) {
	th := NewThrottle(ThrottleConfig{AccountFree: 3, AddressFree: 100, Base: time.Second, Max: 8 * time.Second, Forget: time.Hour})
	now := time.Unix(1000, 0)
	for i := range 3 {
		if err := th.Allow("ada", "10.0.0.1", now); err != nil {
			t.Fatalf("attempt %d throttled: %v", i, err)
		}
		th.Failed("ada", "10.0.0.1", now)
	}
	// 3 free failures used: the 4th attempt is still allowed (the 3rd was free).
	if err := th.Allow("ada", "10.0.0.9", now); err != nil {
		t.Fatalf("4th attempt: %v", err)
	}
	th.Failed("ada", "10.0.0.9", now)
	err := th.Allow("ada", "10.0.0.2", now) // another address: the account is throttled
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, ErrThrottled) || te.Key != "account" || te.RetryAfter != time.Second {
		t.Fatalf("after 4 failures: %v, want account throttled 1s", err)
	}
	if err := th.Allow("grace", "10.0.0.1", now); err != nil {
		t.Fatalf("another account throttled: %v", err)
	}
	// Waits double per failure, capped.
	th.Failed("ada", "10.0.0.2", now)
	th.Failed("ada", "10.0.0.2", now)
	th.Failed("ada", "10.0.0.2", now)
	th.Failed("ada", "10.0.0.2", now)
	if err := th.Allow("ada", "x", now); !errors.As(err, &te) || te.RetryAfter != 8*time.Second {
		t.Fatalf("after 8 failures: %v, want 8s (the cap)", err)
	}
	if err := th.Allow("ada", "x", now.Add(8*time.Second)); err != nil {
		t.Fatalf("after the wait: %v", err)
	}
	th.Succeeded("ada")
	if err := th.Allow("ada", "x", now); err != nil {
		t.Fatalf("after a success: %v", err)
	}
}

func TestThrottlePerAddress(t *testing.T) {
	th := NewThrottle(ThrottleConfig{AccountFree: 100, AddressFree: 2, Base: time.Second, Max: time.Minute, Forget: time.Minute})
	now := time.Unix(1000, 0)
	for _, acc := range []string{"a", "b", "c"} {
		th.Failed(acc, "192.0.2.7", now)
	}
	var te *ThrottledError
	if err := th.Allow("d", "192.0.2.7", now); !errors.As(err, &te) || te.Key != "address" {
		t.Fatalf("an address that failed on 3 accounts: %v, want address throttled", err)
	}
	th.Succeeded("d") // a good login elsewhere does not reset the address
	if err := th.Allow("e", "192.0.2.7", now); err == nil {
		t.Fatal("a success reset the address's failures")
	}
	if err := th.Allow("d", "192.0.2.8", now); err != nil {
		t.Fatalf("another address throttled: %v", err)
	}
	if err := th.Allow("d", "192.0.2.7", now.Add(time.Minute)); err != nil {
		t.Fatalf("failures not forgotten: %v", err)
	}
}

// Token logins name no account: their failures count against the address
// only, never against a shared empty account that would throttle everyone.
func TestThrottleTokenLoginsByAddressOnly(t *testing.T) {
	th := NewThrottle(ThrottleConfig{AccountFree: 1, AddressFree: 3, Base: time.Second, Max: time.Minute, Forget: time.Minute})
	now := time.Unix(1000, 0)
	for i := range 3 {
		th.Failed("", "192.0.2.1", now)
		th.Failed("", "192.0.2."+string(rune('2'+i)), now)
	}
	if err := th.Allow("", "192.0.2.9", now); err != nil {
		t.Fatalf("a fresh address throttled by others' bad tokens: %v", err)
	}
	th.Failed("", "192.0.2.1", now)
	if err := th.Allow("", "192.0.2.1", now); !errors.Is(err, ErrThrottled) {
		t.Fatalf("an address with 4 bad tokens: %v, want throttled", err)
	}
}
