package harness

import (
	"testing"
	"time"
)

// Eventually polls cond every 20ms until it returns nil; the test fails with
// cond's last error if that does not happen within timeout.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
	}
}

// Poll polls cond every 20ms until it returns nil (Poll returns nil) or
// timeout passes (Poll returns cond's last error).
func Poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}
