package chatcore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/ucsmock"
)

// batchStore is a ucsmock.MemStore that counts SaveBatch calls, can hold
// the first one until released, and refuses one chat for good.
type batchStore struct {
	*ucsmock.MemStore

	gate chan struct{} // closed: SaveBatch proceeds; the first call waits on it

	mu       sync.Mutex
	calls    int
	saves    int // saves carried by all calls
	biggest  int
	failChat string // its saves get ErrNonRecoverable
	batchErr error  // while set, every SaveBatch fails as a whole
}

func (b *batchStore) SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error) {
	select {
	case <-b.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	b.mu.Lock()
	b.calls++
	b.saves += len(reqs)
	b.biggest = max(b.biggest, len(reqs))
	fail, berr := b.failChat, b.batchErr
	b.mu.Unlock()
	if berr != nil {
		return nil, berr
	}
	var pass []SaveRequest
	for _, r := range reqs {
		if r.ChatID != fail {
			pass = append(pass, r)
		}
	}
	stored, err := b.MemStore.SaveBatch(ctx, pass)
	if err != nil {
		return nil, err
	}
	res := make([]SaveBatchResult, len(reqs))
	for i, r := range reqs {
		if r.ChatID == fail {
			res[i] = SaveBatchResult{Err: fmt.Errorf("save %s: 422: %w", r.ChatID, ErrNonRecoverable)}
			continue
		}
		res[i], stored = stored[0], stored[1:]
	}
	return res, nil
}

func (b *batchStore) stats() (calls, saves, biggest int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls, b.saves, b.biggest
}

// startBatchCore serves a core over store on loopback, saving after every message.
func startBatchCore(t *testing.T, store TranscriptStore, mod func(*Config)) *testCore {
	t.Helper()
	return startCoreWith(t, store, func(cfg *Config) {
		cfg.TranscriptAutoSave = AutoSaveEveryMessage
		if mod != nil {
			mod(cfg)
		}
	})
}

// saved reports whether every event of session id is acknowledged by UCS.
func (tc *testCore) saved(id string) bool {
	s := tc.c.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.save.SavedThrough == s.lastIndex() && s.save.Settled()
}

func (tc *testCore) ended(id string) bool {
	s := tc.c.session(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.State.Ended
}

// TestSaverBatchesSessions: the saves of many sessions queued together go
// out in one SaveBatch call each time a worker is free, so there are far
// fewer calls than sessions, and every session ends up saved.
func TestSaverBatchesSessions(t *testing.T) {
	store := &batchStore{MemStore: ucsmock.NewMemStore(1), gate: make(chan struct{})}
	tc := startBatchCore(t, store, func(c *Config) { c.TranscriptSaveWorkers = 1 })
	ctx := ctxT(t)
	const n = 40
	var ids []string
	for i := range n {
		r, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "support", Nickname: fmt.Sprint("c", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Auth.SessionId)
		if _, err := tc.cl.Send(ctx, msg(r.Auth, "hello", "")); err != nil {
			t.Fatal(err)
		}
	}
	// The one worker holds (at most) one session in the held call; the
	// others are queued behind it.
	waitFor(t, "sessions queued", func() bool {
		return tc.c.saver.Queued() >= n-1
	})
	close(store.gate)
	for _, id := range ids {
		waitFor(t, "session saved", func() bool { return tc.saved(id) })
	}
	calls, saves, biggest := store.stats()
	if calls >= n/4 || biggest < n-1 || saves < n {
		t.Fatalf("%d SaveBatch calls carrying %d saves (biggest %d) for %d sessions; want a few calls, one of >= %d", calls, saves, biggest, n, n-1)
	}
	for _, id := range ids {
		tr, err := store.Transcript(ctx, id)
		if err != nil || len(tr.Events) != 3 || tr.Events[2].GetText() != "hello" {
			t.Fatalf("transcript of %s: %+v, %v; want start, join and message", id, tr, err)
		}
	}
	if got := tc.metric(t, "hachat_core_transcript_saves_total", "result", "ok"); got < n {
		t.Errorf("%v ok saves counted, want >= %d", got, n)
	}
}

// TestSaverBatchPerChatError: one chat's non-recoverable error in a batch
// closes only that session (transcript-save-on-error=close); the other
// sessions of the same batch are saved and stay open, and the breaker,
// which saw UCS answer, stays closed.
func TestSaverBatchPerChatError(t *testing.T) {
	store := &batchStore{MemStore: ucsmock.NewMemStore(1), gate: make(chan struct{})}
	tc := startBatchCore(t, store, func(c *Config) { c.TranscriptSaveWorkers = 1; c.TranscriptSaveOnError = SaveOnErrorClose })
	ctx := ctxT(t)
	var auths []*chatpb.Auth
	for i := range 10 {
		r, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "support", Nickname: fmt.Sprint("c", i)})
		if err != nil {
			t.Fatal(err)
		}
		auths = append(auths, r.Auth)
	}
	bad := auths[3].SessionId
	store.mu.Lock()
	store.failChat = bad
	store.mu.Unlock()
	for _, a := range auths {
		if _, err := tc.cl.Send(ctx, msg(a, "hello", "")); err != nil {
			t.Fatal(err)
		}
	}
	close(store.gate)
	waitFor(t, "bad session closed", func() bool { return tc.ended(bad) })
	for _, a := range auths {
		if a.SessionId == bad {
			continue
		}
		waitFor(t, "good session saved", func() bool { return tc.saved(a.SessionId) })
		if tc.ended(a.SessionId) {
			t.Errorf("session %s ended by another chat's error", a.SessionId)
		}
	}
	if _, err := store.Transcript(ctx, bad); !errors.Is(err, ErrNotFound) {
		t.Errorf("refused chat stored: %v", err)
	}
	if st := tc.c.saver.Breaker().State(); st != gobreaker.StateClosed {
		t.Errorf("breaker %v after per-chat refusals, want closed", st)
	}
	if got := tc.metric(t, "hachat_core_transcript_saves_total", "result", "nonrecoverable"); got < 1 {
		t.Errorf("nonrecoverable saves counted %v, want >= 1", got)
	}
}

// TestSaverBatchFailureCountsOnce: a batch that fails as a whole is one
// breaker failure however many sessions it carried, and each session
// resends on its own.
func TestSaverBatchFailureCountsOnce(t *testing.T) {
	store := &batchStore{MemStore: ucsmock.NewMemStore(1), gate: make(chan struct{})}
	store.batchErr = fmt.Errorf("injected: %w", ErrUnavailable)
	tc := startBatchCore(t, store, func(c *Config) {
		c.TranscriptSaveWorkers = 1
		c.TranscriptBreakerFailures = 3
		c.TranscriptResendAttempts = 5
		c.TranscriptResendDelay = time.Second // no resend before the checks
	})
	ctx := ctxT(t)
	var ids []string
	for i := range 10 {
		r, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "support", Nickname: fmt.Sprint("c", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Auth.SessionId)
	}
	waitFor(t, "sessions queued", func() bool {
		return tc.c.saver.Queued() >= 9
	})
	close(store.gate)
	// The first batch carried the 9 or 10 queued sessions (the worker may
	// have held one alone); each session counts its resend.
	waitFor(t, "first batches settled", func() bool {
		return tc.metric(t, "hachat_core_transcript_resend_attempts_total") >= 10
	})
	calls, _, _ := store.stats()
	if c := tc.c.saver.Breaker().Counts(); calls > 2 || c.ConsecutiveFailures != uint32(calls) || tc.c.saver.Breaker().State() != gobreaker.StateClosed {
		t.Fatalf("after %d failed batches of 10 sessions: breaker %v counts %+v; want one failure per batch", calls, tc.c.saver.Breaker().State(), c)
	}
	store.mu.Lock()
	store.batchErr = nil
	store.mu.Unlock()
	for _, id := range ids {
		waitFor(t, "session saved after the failure", func() bool { return tc.saved(id) })
	}
	if got := tc.metric(t, "hachat_core_transcript_resend_attempts_total"); got < 10 {
		t.Errorf("%v resends, want one per session at least", got)
	}
}

// TestSaverBatchNotices: with transcript-auto-save=2 every session of a
// batch gets its own TRANSCRIPT_SAVED notice after the batched save.
func TestSaverBatchNotices(t *testing.T) {
	store := &batchStore{MemStore: ucsmock.NewMemStore(1), gate: make(chan struct{})}
	tc := startBatchCore(t, store, func(c *Config) { c.TranscriptAutoSave = AutoSaveWithNotices })
	ctx := ctxT(t)
	var ids []string
	for i := range 20 {
		r, err := tc.cl.StartSession(ctx, &chatpb.StartSessionRequest{Service: "support", Nickname: fmt.Sprint("c", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Auth.SessionId)
	}
	close(store.gate)
	for _, id := range ids {
		waitFor(t, "save notice", func() bool {
			for _, k := range tc.logKinds(id) {
				if k == chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED {
					return true
				}
			}
			return false
		})
	}
	if calls, _, _ := store.stats(); calls >= 20 {
		t.Errorf("%d calls for 20 sessions held behind one call", calls)
	}
}
