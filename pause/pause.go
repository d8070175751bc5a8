// Package pause waits for a while unless a context ends first: the wait
// between retries, the pacing of a batch, a load generator's think time.
package pause

import (
	"context"
	"time"
)

// For waits d, or until ctx is done, and reports whether ctx is still
// live. A d of zero or less does not wait.
func For(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
