package saver

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/transcript"
)

// batchStore is a memStore that takes batches and records when each
// batch started and which chats it held.
type batchStore struct {
	*memStore
	mu      sync.Mutex
	starts  []time.Time
	batches [][]string
}

func (b *batchStore) SaveBatch(ctx context.Context, reqs []transcript.SaveRequest) ([]transcript.SaveBatchResult, error) {
	b.mu.Lock()
	b.starts = append(b.starts, time.Now())
	var ids []string
	for _, r := range reqs {
		ids = append(ids, r.ChatID)
	}
	b.batches = append(b.batches, ids)
	b.mu.Unlock()
	out := make([]transcript.SaveBatchResult, len(reqs))
	for i, r := range reqs {
		res, err := b.Save(ctx, r)
		out[i] = transcript.SaveBatchResult{Result: res, Err: err}
	}
	return out, nil
}

func (b *batchStore) seen() (starts []time.Time, batches [][]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.starts...), append([][]string(nil), b.batches...)
}

// TestSaverLingerPacesBatches: after a batch that did not fill, the next
// starts no sooner than transcript-save-linger after it, and the sessions
// dirtied meanwhile share it (one UCS commit instead of one each).
func TestSaverLingerPacesBatches(t *testing.T) {
	const linger = 300 * time.Millisecond
	store := &batchStore{memStore: newMemStore()}
	sv := newTestSaver(t, store, &fakeCore{}, func(c *Config) { c.Linger = linger })

	a := &fakeSession{id: "chat-a"}
	a.commit(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, "")
	sv.Enqueue(a)
	waitFor(t, "the first batch saved", func() bool { return a.savedThrough() == 1 })

	var later []*fakeSession
	for _, id := range []string{"chat-b", "chat-c", "chat-d"} {
		s := &fakeSession{id: id}
		s.commit(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, "")
		sv.Enqueue(s)
		later = append(later, s)
	}
	waitFor(t, "the three later sessions saved", func() bool {
		for _, s := range later {
			if s.savedThrough() != 1 {
				return false
			}
		}
		return true
	})
	starts, batches := store.seen()
	if len(batches) != 2 || len(batches[1]) != 3 {
		t.Fatalf("batches %v, want [chat-a] then the three sessions dirtied during the linger in one", batches)
	}
	// The saver's clock starts when it takes the first batch, a moment
	// before the store sees it (building the requests), so the store sees
	// a gap up to that moment shorter than the linger; without pacing the
	// gap is a few milliseconds at most.
	if gap, want := starts[1].Sub(starts[0]), linger*9/10; gap < want {
		t.Errorf("second batch started %s after the first, want about the linger %s (at least %s)", gap, linger, want)
	}
}

// TestPace: pace waits out what is left of the linger, not more; returns at
// once when the batch took longer; and reports a cancelled context.
func TestPace(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	if !pace(ctx, start, 50*time.Millisecond) {
		t.Fatal("pace reported a live context as done")
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Errorf("pace returned after %s, want the linger of 50ms", waited)
	}
	if !pace(ctx, time.Now().Add(-time.Hour), time.Hour-time.Millisecond) {
		t.Error("pace after the linger passed reported a live context as done")
	}
	if !pace(ctx, time.Now(), 0) {
		t.Error("pace with no linger reported a live context as done")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if pace(cctx, time.Now(), time.Hour) {
		t.Error("pace with a cancelled context reported true")
	}
}
