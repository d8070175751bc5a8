package ucsmock

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// maxLatencyMs bounds injected latency.
const maxLatencyMs = 60_000

// fault is the outcome of consulting the injector for one request.
type fault int

const (
	faultNone fault = iota
	faultOutage
	faultNonRecoverable
	faultRecoverable
)

// validate checks injected faults.
func (f Faults) validate() error {
	switch {
	case f.LatencyMs < 0 || f.LatencyMs > maxLatencyMs:
		return invalidf("latencyMs %d out of range 0..%d", f.LatencyMs, maxLatencyMs)
	case !(f.RecoverableErrorRate >= 0 && f.RecoverableErrorRate <= 1):
		return invalidf("recoverableErrorRate %v out of range 0..1", f.RecoverableErrorRate)
	}
	return nil
}

// injector holds the injected faults and the random source that decides
// recoverable errors. It is owned by one server or MemStore; the source is
// seeded so that a run is reproducible.
type injector struct {
	mu     sync.Mutex
	faults Faults
	rng    *rand.Rand
}

func newInjector(seed uint64) *injector {
	return &injector{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (in *injector) set(f Faults) error {
	if err := f.validate(); err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.faults = f
	return nil
}

func (in *injector) get() Faults {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.faults
}

// outage reports whether a full outage is injected (it applies to reads too).
func (in *injector) outage() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.faults.Outage
}

// write decides the fault of one save or claim: outage first, then the
// injected latency (waited out here, unless ctx ends), then a
// non-recoverable error, then a recoverable error drawn at the configured
// rate. delayed reports whether latency was added.
func (in *injector) write(ctx context.Context) (f fault, delayed bool, err error) {
	cur, delayed, err := in.delay(ctx)
	if err != nil || cur.Outage {
		if cur.Outage {
			return faultOutage, false, nil
		}
		return faultNone, delayed, err
	}
	return in.item(cur), delayed, nil
}

// delay is the part of write that applies once per request, a batch
// included: it returns the current faults and, unless an outage is
// injected, waits out the injected latency first.
func (in *injector) delay(ctx context.Context) (cur Faults, delayed bool, err error) {
	in.mu.Lock()
	cur = in.faults
	in.mu.Unlock()
	if cur.Outage {
		return cur, false, nil
	}
	if cur.LatencyMs > 0 {
		t := time.NewTimer(time.Duration(cur.LatencyMs) * time.Millisecond)
		select {
		case <-t.C:
			delayed = true
		case <-ctx.Done():
			t.Stop()
			return cur, true, fmt.Errorf("injected latency: %w", ctx.Err())
		}
	}
	return cur, delayed, nil
}

// item is the part of write that applies to each save (each item of a
// batch on its own): the non-recoverable error, else a recoverable error
// drawn at the configured rate.
func (in *injector) item(cur Faults) fault {
	if cur.NonRecoverable {
		return faultNonRecoverable
	}
	if cur.RecoverableErrorRate > 0 {
		in.mu.Lock()
		hit := in.rng.Float64() < cur.RecoverableErrorRate
		in.mu.Unlock()
		if hit {
			return faultRecoverable
		}
	}
	return faultNone
}

// String names the fault for metrics and errors.
func (f fault) String() string {
	switch f {
	case faultOutage:
		return "outage"
	case faultNonRecoverable:
		return "non-recoverable"
	case faultRecoverable:
		return "recoverable"
	}
	return "none"
}

// err maps a fault to the error a Store returns for it.
func (f fault) err() error {
	switch f {
	case faultOutage:
		return fmt.Errorf("injected outage: %w", ErrUnavailable)
	case faultNonRecoverable:
		return fmt.Errorf("injected non-recoverable error: %w", ErrNonRecoverable)
	case faultRecoverable:
		return fmt.Errorf("injected recoverable error: %w", ErrUnavailable)
	}
	return nil
}
