package chatclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Policy is how a Client retries a call to the chat core. It is the one
// retry layer of every client of the core: webapi and interaction call the
// Client once per request and do not retry themselves, and the Client does
// not enable gRPC's own retry policy (grpc-go's transparent retry of a call
// that never left the client is the only other one, and it cannot apply a
// call twice).
//
// A call is retried when all of these hold:
//   - the call is idempotent: reads (Events, Status), Leave (a second leave
//     is refused FailedPrecondition, which callers take as done), and the
//     calls that carry an idempotency key the Client sets (Send's client
//     message id, StartSession's and Join's client request id). Switchover
//     is not: it is done once or reported as failed;
//   - the error says the core did not take the call, or took it
//     idempotently: Unavailable (away, not primary, draining for a
//     switchover, restoring, no second copy possible), Aborted (a promotion
//     gave up), or DeadlineExceeded of one attempt (a silent core: the next
//     attempt goes to the next target). Anything else (InvalidArgument,
//     NotFound, PermissionDenied, FailedPrecondition, ResourceExhausted, ...)
//     is the core's answer and is returned at once;
//   - the caller's context is live, the retry deadline has not passed, and
//     MaxAttempts (when set) is not reached.
//
// The pause between attempts is the backoff below, except after the refusal
// of a core that has just handed the primary role over at a switchover
// (HandedOver): the new primary has claimed by then, so the next attempt
// goes at once, on the next target or on a new connection to the one
// target (see retrier.wait).
//
// A send whose every attempt failed is reported with the last error: the
// caller cannot know whether it was applied, and answers so that its own
// client resends with the same client message id (webapi: statusCode 1).
type Policy struct {
	// RetryFor bounds how long one call keeps retrying when the caller's
	// context has no deadline (default 10s: longer than any failover). A
	// caller's deadline, when it has one, rules instead.
	RetryFor time.Duration `yaml:"core-retry-for"`
	// AttemptTimeout bounds one attempt of a unary call, so that a silent
	// (stopped) core does not hold a call for ever (default 2s).
	AttemptTimeout time.Duration `yaml:"core-attempt-timeout"`
	// MinBackoff and MaxBackoff bound the pause between attempts (defaults
	// 5ms and 100ms): the pause doubles from MinBackoff up to MaxBackoff,
	// and is drawn from its upper half (jitter). Small, since failover is
	// measured in ms and the pause a client adds after the core is back is
	// at most MaxBackoff.
	MinBackoff time.Duration `yaml:"core-min-backoff"`
	MaxBackoff time.Duration `yaml:"core-max-backoff"`
	// MaxAttempts caps the attempts of one unary call, the first included;
	// 0 (the default) leaves only the deadline, and 1 disables retries.
	// Subscribe and WatchSessions streams resume by themselves (the
	// backoff above paces them) until their caller stops them.
	MaxAttempts int `yaml:"core-max-attempts"`
}

// DefaultPolicy returns the defaults documented on Policy.
func DefaultPolicy() Policy {
	return Policy{
		RetryFor:       10 * time.Second,
		AttemptTimeout: 2 * time.Second,
		MinBackoff:     5 * time.Millisecond,
		MaxBackoff:     100 * time.Millisecond,
	}
}

// ErrBadPolicy reports a Policy that cannot be used.
var ErrBadPolicy = errors.New("chatclient: bad retry policy")

// Validate reports a negative duration or attempt count, or a MinBackoff
// above MaxBackoff.
func (p Policy) Validate() error {
	switch {
	case p.RetryFor < 0, p.AttemptTimeout < 0, p.MinBackoff < 0, p.MaxBackoff < 0:
		return fmt.Errorf("%w: durations must not be negative", ErrBadPolicy)
	case p.MaxAttempts < 0:
		return fmt.Errorf("%w: core-max-attempts must not be negative, got %d", ErrBadPolicy, p.MaxAttempts)
	case p.MaxBackoff > 0 && p.MinBackoff > p.MaxBackoff:
		return fmt.Errorf("%w: core-min-backoff %s is above core-max-backoff %s", ErrBadPolicy, p.MinBackoff, p.MaxBackoff)
	}
	return nil
}

// Retryable reports whether an error from the chat core means "try again,
// maybe elsewhere": the core is away, not primary, draining, or silent.
func Retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded:
		return true
	}
	return false
}

// Retry reports whether a call that has made attempts attempts (the first
// included), the last failing with err, is tried again. idempotent says
// whether the call may be applied twice without harm (see Policy).
// Deadlines are not its business: the caller's context ends the retries.
func (p Policy) Retry(err error, attempts int, idempotent bool) bool {
	if err == nil || !idempotent || !Retryable(err) {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's own context, not the core
	}
	return p.MaxAttempts == 0 || attempts < p.MaxAttempts
}

// Backoff returns the pause after the attempt-th failed attempt (1-based):
// MinBackoff doubled per attempt, capped at limit (MaxBackoff when limit is
// zero or larger), and drawn from the upper half of that (jitter).
func (p Policy) Backoff(attempt int, limit time.Duration) time.Duration {
	if limit <= 0 || limit > p.MaxBackoff {
		limit = p.MaxBackoff
	}
	d := p.MinBackoff << min(max(attempt-1, 0), 20)
	if d > limit || d <= 0 {
		d = limit
	}
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}
