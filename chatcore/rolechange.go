package chatcore

import (
	"context"
	"sync"
	"time"
)

// maxRoleChangeHold bounds how long the gate holds a Chat call while a
// role change of this core is under way (see roleChange): a claim that
// waits for the old primary's lease, or for an unreachable fencing
// authority, must not keep callers longer than this; they are then refused
// as before (UNAVAILABLE) and retry. It stays well under the client's
// default attempt timeout (chatclient's AttemptTimeout, 2s), so a held call
// is never taken for a silent core.
const maxRoleChangeHold = time.Second

// roleChange tells whether a change of this core's role is under way: a
// backup promoting itself (a failover's promote, a switchover's takeOver,
// from the decision to the end of the claim) or a primary handing over
// (handover: from the drain to the step-down or the abort). It wakes the
// calls the gate held meanwhile when the change ends. A call that reaches
// the core then (the sidecar or a client moved to the backup on the old
// primary's refused connection; a client still on the draining primary)
// waits for the outcome instead of being refused at once and retried after
// the client's backoff: react to the change, not to a timer. The hold
// grants nothing: the held call passes the gate's checks again afterwards,
// so only a core that claimed its epoch and is not draining serves it.
// Its zero value is ready.
type roleChange struct {
	mu   sync.Mutex
	n    int           // changes under way (one at a time in practice)
	done chan struct{} // closed when n drops to 0; nil while none is under way
	held int           // calls waiting now (for tests and their event order)
}

// begin marks a role change under way; the returned end marks it over and
// wakes every held call when no other is under way. end may be called more
// than once.
func (p *roleChange) begin() (end func()) {
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

// wait holds the caller while a role change is under way, until it ends,
// ctx ends or max passed, whichever comes first. It returns at once when
// none is under way.
func (p *roleChange) wait(ctx context.Context, max time.Duration) {
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
func (p *roleChange) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// handedOverRefusal is how long after a handover this core, now a backup,
// refuses Chat calls with errHandedOver rather than errNotPrimary: the
// calls it held during the drain, those on a connection its client's
// sidecar has not moved yet (the sidecar sees the new primary a few
// milliseconds after its claim), and the streams it ended at the step-down.
// The new primary has claimed by then, so the client retries without a
// backoff (chatclient: on a new connection, or on its next target).
const handedOverRefusal = time.Second

// notPrimary is the error of a Chat call this core refuses because it is not
// primary: errHandedOver within handedOverRefusal of a handover (by the
// core's clock, which handover stamps), else errNotPrimary.
func (c *Core) notPrimary() error {
	if at := c.handedOver.Load(); at != 0 && c.now().Sub(time.Unix(0, at)) < handedOverRefusal {
		return errHandedOver
	}
	return errNotPrimary
}
