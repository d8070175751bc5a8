// Package workers runs the numbered jobs of a benchmark's load generator on
// a fixed number of goroutines.
package workers

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// Range calls fn(ctx, i) for every i in [from, to) on n goroutines and
// returns when every call returned: once all are done, after the first
// error (which it returns; the calls in flight see ctx cancelled), when ctx
// ends, or when stop is closed (nil: never). Jobs are handed out in order.
func Range(ctx context.Context, n, from, to int, stop <-chan struct{}, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range max(min(n, to-from), 0) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := int(next.Add(1) - 1)
				if i >= to || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
