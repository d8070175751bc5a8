package chatcore

import (
	"context"
	"sync"
	"time"
)

// maxPromotionHold bounds how long the gate holds a Chat call that reaches a
// backup while its promotion is under way (see promotion): a claim that
// waits for the old primary's lease, or for an unreachable fencing
// authority, must not keep callers longer than this; they are then refused
// as before (UNAVAILABLE) and retry. It stays well under the client's
// default attempt timeout (chatclient's AttemptTimeout, 2s), so a held call
// is never taken for a silent core.
const maxPromotionHold = time.Second

// promotion tells whether this core is promoting itself (a failover's
// promote or a switchover's takeOver, from the decision to the end of the
// claim and the restoration), and wakes the calls held meanwhile when it
// ends. A call that reaches a backup while its promotion is under way (the
// sidecar or a client moved to it on the old primary's refused connection)
// then waits for the promotion's outcome instead of being refused and
// retried after a backoff: React to the promotion, not to a timer. The hold
// grants nothing: the held call passes the gate's checks again afterwards,
// and only a core that claimed its epoch serves it. Its zero value is ready.
type promotion struct {
	mu   sync.Mutex
	n    int           // promotions under way (one at a time in practice)
	done chan struct{} // closed when n drops to 0; nil while none is under way
	held int           // calls waiting now (for tests and their event order)
}

// begin marks a promotion under way; the returned end marks it over and
// wakes every held call. end must be called exactly once.
func (p *promotion) begin() (end func()) {
	p.mu.Lock()
	if p.n == 0 {
		p.done = make(chan struct{})
	}
	p.n++
	p.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.n--; p.n == 0 {
				close(p.done)
				p.done = nil
			}
		})
	}
}

// wait holds the caller while a promotion is under way, until it ends, ctx
// ends or max passed, whichever comes first. It returns at once when no
// promotion is under way.
func (p *promotion) wait(ctx context.Context, max time.Duration) {
	p.mu.Lock()
	done := p.done
	if done == nil {
		p.mu.Unlock()
		return
	}
	p.held++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.held--
		p.mu.Unlock()
	}()
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
	}
}

// waiting is how many calls are held now.
func (p *promotion) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}
