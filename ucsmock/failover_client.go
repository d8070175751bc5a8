package ucsmock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/telemetry"
)

// FailoverClient is a client of several ucs instances that share one store
// (ucs --store postgres): each call goes to the instance that answered
// last, and moves on to the next instance when that one fails as an
// instance does (ErrUnavailable: unreachable, 5xx, outage), each instance
// tried at most once per call. Every call it makes is idempotent (saves,
// batch saves, a retried claim or renewal by the same holder), so a call
// that may have reached a dying instance can be sent to the next one. An
// answer about the data (stale epoch, conflict, invalid, not found, access
// denied, non-recoverable) is returned at once: the other instances share
// the store and would answer the same. It is safe for concurrent use.
type FailoverClient struct {
	clients  []*Client
	urls     []string
	current  atomic.Int64
	log      *slog.Logger
	failures *prometheus.CounterVec
	moves    prometheus.Counter
}

var _ BatchStore = (*FailoverClient)(nil)

// NewFailoverClient returns a client of the ucs instances at urls (base
// URLs, at least one), each built like NewClient with httpClient and tel.
// Its metrics (ucs_client_instance_failures_total by instance,
// ucs_client_failovers_total) go to tel's registry.
func NewFailoverClient(urls []string, build func(url string) *Client, tel *telemetry.Telemetry) (*FailoverClient, error) {
	if len(urls) == 0 {
		return nil, errors.New("no ucs address")
	}
	if tel == nil {
		tel = telemetry.Discard()
	}
	f := &FailoverClient{log: tel.Logger}
	for _, u := range urls {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			return nil, fmt.Errorf("empty ucs address in %q", strings.Join(urls, ","))
		}
		f.urls = append(f.urls, u)
		f.clients = append(f.clients, build(u))
	}
	f.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ucs_client_instance_failures_total", Help: "Calls to a ucs instance that failed as an instance does (unreachable, 5xx, outage), by instance.",
	}, []string{"instance"})
	f.moves = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ucs_client_failovers_total", Help: "Times the UCS client moved to another ucs instance.",
	})
	if tel.Registry != nil {
		// A process may build several clients (tests do): they share the
		// metrics registered first.
		var err error
		if f.failures, err = register(tel.Registry, f.failures); err != nil {
			return nil, err
		}
		if f.moves, err = register(tel.Registry, f.moves); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// register registers c, or returns the collector already registered under
// its name.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old, nil
			}
		}
		return c, fmt.Errorf("register metric: %w", err)
	}
	return c, nil
}

// Instances returns the base URLs of the instances, in order.
func (f *FailoverClient) Instances() []string { return append([]string(nil), f.urls...) }

// call runs op on the current instance and, while it fails with
// ErrUnavailable and ctx lasts, on the next ones.
func call[T any](ctx context.Context, f *FailoverClient, what string, op func(c *Client) (T, error)) (T, error) {
	start := int(f.current.Load())
	var zero T
	var errs []error
	for i := range f.clients {
		n := (start + i) % len(f.clients)
		v, err := op(f.clients[n])
		if err == nil || !errors.Is(err, ErrUnavailable) {
			if i > 0 && err == nil && f.current.CompareAndSwap(int64(start), int64(n)) {
				f.moves.Inc()
				f.log.WarnContext(ctx, "ucs: moved to another instance", "op", what, "from", f.urls[start], "to", f.urls[n])
			}
			return v, err
		}
		f.failures.WithLabelValues(f.urls[n]).Inc()
		f.log.WarnContext(ctx, "ucs instance failed", "op", what, "instance", f.urls[n], "err", err, "instances", len(f.clients))
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return zero, errs[0]
	}
	return zero, fmt.Errorf("every ucs instance failed: %w", errors.Join(errs...))
}

// Save stores events of one chat; see Store.
func (f *FailoverClient) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	return call(ctx, f, "save", func(c *Client) (SaveResult, error) { return c.Save(ctx, req) })
}

// SaveBatch applies many saves; see BatchStore.
func (f *FailoverClient) SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error) {
	return call(ctx, f, "save batch", func(c *Client) ([]SaveBatchResult, error) { return c.SaveBatch(ctx, reqs) })
}

// Transcript returns a chat's stored events; see Store.
func (f *FailoverClient) Transcript(ctx context.Context, chatID string) (*Transcript, error) {
	return call(ctx, f, "transcript", func(c *Client) (*Transcript, error) { return c.Transcript(ctx, chatID) })
}

// Chats lists the stored chats that flt keeps.
func (f *FailoverClient) Chats(ctx context.Context, flt ChatFilter) ([]ChatInfo, error) {
	return call(ctx, f, "chats", func(c *Client) ([]ChatInfo, error) { return c.Chats(ctx, flt) })
}

// ClaimEpoch is the compare-and-set of the service's epoch; see Store.
func (f *FailoverClient) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	return call(ctx, f, "claim", func(c *Client) (Epoch, error) { return c.ClaimEpoch(ctx, service, expect, epoch, holder) })
}

// ClaimEpochIfSilent is ClaimEpoch that spares a live holder; see Store.
func (f *FailoverClient) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	return call(ctx, f, "claim", func(c *Client) (Epoch, error) {
		return c.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, silent)
	})
}

// Renew records that holder, holding epoch, is alive; see Store.
func (f *FailoverClient) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	return call(ctx, f, "renew", func(c *Client) (Epoch, error) { return c.Renew(ctx, service, epoch, holder) })
}

// Epoch returns the service's current epoch; see Store.
func (f *FailoverClient) Epoch(ctx context.Context, service string) (Epoch, error) {
	return call(ctx, f, "epoch", func(c *Client) (Epoch, error) { return c.Epoch(ctx, service) })
}
