package chatclient

import (
	"sync"
	"sync/atomic"
	"time"
)

// liveness tells a silent target from a slow one. An attempt that timed out
// says only that one call went unanswered; a core that is overloaded (a new
// primary taking 20,000 resubscriptions after a failover) answers late while
// its streams keep delivering, and cancelling those streams then restarts the
// storm that made it slow. So the Client notes when it last heard from each
// target (a stream's message, a send's result, a call's answer), and a target
// is stalled only when it has been silent for a whole attempt timeout.
type liveness struct {
	base  time.Time      // the monotonic origin of heard
	heard []atomic.Int64 // per target: when it was last heard from, in ns since base

	mu      sync.Mutex
	recheck []*time.Timer // per target: the pending look at a target heard during a timed-out attempt
	closed  bool
}

// heardGranularity is how stale a target's heard time may be: a stream
// delivering thousands of events a second writes it once a millisecond, not
// once an event.
const heardGranularity = time.Millisecond

func (l *liveness) init(targets int) {
	l.base = time.Now()
	l.heard = make([]atomic.Int64, targets)
	l.recheck = make([]*time.Timer, targets)
}

// hear records that target idx answered something just now.
func (l *liveness) hear(idx int32) {
	now := int64(time.Since(l.base))
	h := &l.heard[idx]
	if now-h.Load() >= int64(heardGranularity) {
		h.Store(now)
	}
}

// restart counts target idx as heard just now: its streams were just moved,
// and the new ones get a whole attempt timeout to deliver before another
// timed-out attempt (most of them began before the move) can move them again.
func (l *liveness) restart(idx int32) {
	l.heard[idx].Store(int64(time.Since(l.base)))
}

// silentFor reports how long target idx has not been heard from (since New
// when it never was).
func (l *liveness) silentFor(idx int32) time.Duration {
	return time.Since(l.base) - time.Duration(l.heard[idx].Load())
}

// after runs f in d unless a look at target idx is already pending or the
// Client is closed.
func (l *liveness) after(idx int32, d time.Duration, f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.recheck[idx] != nil {
		return
	}
	l.recheck[idx] = time.AfterFunc(d, func() {
		l.mu.Lock()
		l.recheck[idx] = nil
		closed := l.closed
		l.mu.Unlock()
		if !closed {
			f()
		}
	})
}

// close stops the pending looks.
func (l *liveness) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for i, t := range l.recheck {
		if t != nil {
			t.Stop()
			l.recheck[i] = nil
		}
	}
}

// timedOut is told that an attempt on target idx timed out. The target's
// streams are cancelled (Client.stallIfSilent: they resume on the target then
// believed to serve) only when nothing was heard from it for quiet, the
// attempt timeout: a SIGSTOPped or cut-off core, whose streams would
// otherwise hang until keepalive noticed (10s and more). A target heard
// from within quiet is slow, not silent, and keeps its streams; it is
// looked at again once it would have been silent for quiet, since it may
// have stopped just before the attempt timed out (its last words inside
// the attempt).
func (c *Client) timedOut(idx int32) {
	quiet := c.cfg.AttemptTimeout
	silent, stalled := c.stallIfSilent(idx, quiet)
	if stalled {
		return
	}
	c.log.Debug("chat core slow, not silent: its streams stay", "target", c.cfg.Targets[idx], "heard-ago", silent)
	c.live.after(idx, quiet-silent, func() { c.stallIfSilent(idx, quiet) })
}
