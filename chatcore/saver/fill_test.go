package saver

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/transcript"
)

// batchStore is a memStore that saves in batches: it records the size of
// each batch, and holds the first one until release is closed.
type batchStore struct {
	*memStore
	release chan struct{}

	bmu   sync.Mutex
	sizes []int
}

func (b *batchStore) SaveBatch(ctx context.Context, reqs []transcript.SaveRequest) ([]transcript.SaveBatchResult, error) {
	b.bmu.Lock()
	b.sizes = append(b.sizes, len(reqs))
	first := len(b.sizes) == 1
	b.bmu.Unlock()
	if first {
		select {
		case <-b.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	out := make([]transcript.SaveBatchResult, len(reqs))
	for i, r := range reqs {
		out[i].Result, out[i].Err = b.Save(ctx, r)
	}
	return out, nil
}

func (b *batchStore) batches() []int {
	b.bmu.Lock()
	defer b.bmu.Unlock()
	return slices.Clone(b.sizes)
}

// TestSaverBatchFill: a save after a quiet spell goes at once, alone; while
// saves flow (sessions queued during the batch in flight) a batch that is
// not full waits for more, up to the linger, and goes as soon as it is
// full. The linger here is an hour: a batch that goes before it is full
// fails the test.
func TestSaverBatchFill(t *testing.T) {
	for _, tc := range []struct {
		name        string
		max         int
		queuedFirst int   // sessions queued while the first batch is held
		queuedLater int   // sessions queued once the second batch is taken
		want        []int // batch sizes
	}{
		{name: "fills to the max", max: 8, queuedFirst: 5, queuedLater: 3, want: []int{1, 8}},
		{name: "full at once", max: 4, queuedFirst: 4, queuedLater: 0, want: []int{1, 4}},
		{name: "overflow goes next", max: 4, queuedFirst: 6, queuedLater: 2, want: []int{1, 4, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &batchStore{memStore: newMemStore(), release: make(chan struct{})}
			sv := newTestSaver(t, store, &fakeCore{}, func(sv *Saver) { sv.batchMax, sv.linger = tc.max, time.Hour })
			n := 0
			enqueue := func(k int) {
				for range k {
					n++
					s := &fakeSession{id: fmt.Sprintf("chat-%d", n)}
					s.commit(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, "")
					sv.Enqueue(s)
				}
			}
			enqueue(1)
			waitFor(t, "the first (lone) save sent", func() bool { return len(store.batches()) == 1 })
			enqueue(tc.queuedFirst)
			close(store.release)
			// The worker takes the queued sessions at once; a saver without
			// the linger sends them now, before the later ones are queued.
			waitFor(t, "the queue taken", func() bool { return sv.Queued() == 0 })
			time.Sleep(50 * time.Millisecond) // only lets a saver without the linger send its short batch
			enqueue(tc.queuedLater)
			waitFor(t, fmt.Sprintf("batches %v", tc.want), func() bool {
				got := store.batches()
				sum := 0
				for _, x := range got {
					sum += x
				}
				return sum == n
			})
			if got := store.batches(); !slices.Equal(got, tc.want) {
				t.Fatalf("batches %v, want %v", got, tc.want)
			}
		})
	}
}
