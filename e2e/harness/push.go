package harness

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// PushWatcher records a customer's push channel (SSE) the way the web sample
// does: events keyed by index, reopened from the next index whenever the
// stream ends, like a browser's EventSource. Its view is what the customer
// sees live, and the checker holds it to the same rules as the others.
type PushWatcher struct {
	chat   *Chat
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	byIndex  map[uint64]ViewEvent
	next     uint64
	named    map[string]int
	problems []string
	changed  chan struct{}
}

// WatchPush opens the customer's push channel from index 1 and records it
// until Close.
func WatchPush(chat *Chat) *PushWatcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &PushWatcher{chat: chat, cancel: cancel, done: make(chan struct{}), byIndex: map[uint64]ViewEvent{},
		next: 1, named: map[string]int{}, changed: make(chan struct{})}
	go w.run(ctx)
	return w
}

// Name implements Viewer.
func (w *PushWatcher) Name() string { return "customer push channel" }

// Close stops recording.
func (w *PushWatcher) Close() {
	w.cancel()
	<-w.done
}

func (w *PushWatcher) run(ctx context.Context) {
	defer close(w.done)
	for ctx.Err() == nil {
		w.mu.Lock()
		from := w.next
		w.mu.Unlock()
		s, err := w.chat.Events(ctx, from)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond): // EventSource's retry
			}
			continue
		}
		for {
			ev, err := s.Next(ctx)
			if err != nil {
				break
			}
			w.record(ev)
		}
		s.Close()
	}
}

func (w *PushWatcher) record(ev SSEEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.named[ev.Event]++
	if ev.Event == "" {
		m, err := ev.Message()
		if err != nil {
			w.problems = append(w.problems, fmt.Sprintf("undecodable push event %.200q: %v", ev.Data, err))
		} else if m.Index > 0 {
			v := ViewEvent{Index: m.Index, Type: m.Type, Text: m.Text, ClientMessageID: m.ClientMessageID}
			if old, seen := w.byIndex[m.Index]; seen && (old.Type != v.Type || old.Text != v.Text) {
				w.problems = append(w.problems, fmt.Sprintf("index %d pushed as %s %q and as %s %q", m.Index, old.Type, old.Text, v.Type, v.Text))
			}
			w.byIndex[m.Index] = v
			w.next = max(w.next, m.Index+1)
		}
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// Seen counts the named push events (reconnecting, reconnected, ...) received.
func (w *PushWatcher) Seen(event string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.named[event]
}

// View implements Viewer.
func (w *PushWatcher) View(ctx context.Context, through uint64) ([]ViewEvent, error) {
	for {
		w.mu.Lock()
		reached := w.next > through
		changed := w.changed
		w.mu.Unlock()
		if reached {
			break
		}
		select {
		case <-ctx.Done():
			w.mu.Lock()
			next := w.next
			w.mu.Unlock()
			return nil, fmt.Errorf("push channel stopped before index %d (next %d): %w", through, next, ctx.Err())
		case <-changed:
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.problems) > 0 {
		return nil, fmt.Errorf("push channel inconsistencies: %v", slices.Clone(w.problems))
	}
	out := make([]ViewEvent, 0, len(w.byIndex))
	for _, v := range w.byIndex {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}
