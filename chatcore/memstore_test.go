package chatcore

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/ucsmock"
)

// memStore is an in-memory TranscriptStore with injectable faults, the
// test double of ucsmock.
type memStore struct {
	mu          sync.Mutex
	chats       map[string]map[uint64]*chatpb.Event
	ended       map[string]bool
	epochs      map[string]Epoch
	saveErr     error // returned by every Save while set
	failNext    int   // the next failNext saves fail with ErrUnavailable
	saves       int   // Save calls
	savedReqs   []SaveRequest
	minEpochErr bool
	claims      int // successful epoch claims
	renews      int // successful lease renewals
}

func newMemStore() *memStore {
	return &memStore{chats: map[string]map[uint64]*chatpb.Event{}, ended: map[string]bool{}, epochs: map[string]Epoch{}}
}

func (m *memStore) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saves++
	if err := ctx.Err(); err != nil {
		return SaveResult{}, fmt.Errorf("save: %w", ErrUnavailable)
	}
	if m.saveErr != nil {
		return SaveResult{}, m.saveErr
	}
	if m.failNext > 0 {
		m.failNext--
		return SaveResult{}, fmt.Errorf("injected: %w", ErrUnavailable)
	}
	if req.Epoch < m.epochs[req.Service].Epoch {
		return SaveResult{}, ErrStaleEpoch
	}
	if req.Epoch > m.epochs[req.Service].Epoch {
		// As ucsmock does: a newer epoch becomes the service's (UCS learns
		// the epochs of the coordination cluster from the saves it sees).
		m.epochs[req.Service] = Epoch{Epoch: req.Epoch, Holder: req.Writer}
	}
	m.savedReqs = append(m.savedReqs, req)
	c := m.chats[req.ChatID]
	if c == nil {
		c = map[uint64]*chatpb.Event{}
		m.chats[req.ChatID] = c
	}
	var through uint64
	for _, ev := range req.Events {
		if _, ok := c[ev.Index]; !ok {
			c[ev.Index] = ev
		}
		through = max(through, ev.Index)
	}
	if req.Ended {
		m.ended[req.ChatID] = true
	}
	return SaveResult{HighestIndex: through}, nil
}

func (m *memStore) Transcript(ctx context.Context, chatID string) (*Transcript, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.chats[chatID]
	if !ok {
		return nil, ErrNotFound
	}
	t := &Transcript{ChatID: chatID, Ended: m.ended[chatID]}
	for _, ev := range c {
		t.Events = append(t.Events, ev)
	}
	sort.Slice(t.Events, func(i, j int) bool { return t.Events[i].Index < t.Events[j].Index })
	return t, nil
}

func (m *memStore) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	return m.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, 0)
}

func (m *memStore) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.epochs[service]
	if cur.Epoch != expect || epoch <= cur.Epoch {
		return cur, &ucsmock.EpochConflictError{Epoch: cur.Epoch, Holder: cur.Holder}
	}
	if ago := time.Since(time.UnixMilli(cur.HeardUnixMs)); silent > 0 && cur.Holder != holder && cur.HeardUnixMs > 0 && ago < silent {
		return cur, &ucsmock.EpochConflictError{Epoch: cur.Epoch, Holder: cur.Holder, HolderAlive: true, HeardAgo: ago}
	}
	e := Epoch{Epoch: epoch, Holder: holder, HeardUnixMs: time.Now().UnixMilli()}
	m.epochs[service] = e
	m.claims++
	return e, nil
}

func (m *memStore) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.epochs[service]
	switch {
	case epoch < cur.Epoch:
		return cur, &ucsmock.StaleEpochError{Epoch: cur.Epoch, Holder: cur.Holder}
	case epoch > cur.Epoch || cur.Holder != holder:
		return cur, &ucsmock.EpochConflictError{Epoch: cur.Epoch, Holder: cur.Holder}
	}
	cur.HeardUnixMs = time.Now().UnixMilli()
	m.epochs[service] = cur
	m.renews++
	return cur, nil
}

func (m *memStore) Epoch(ctx context.Context, service string) (Epoch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.epochs[service], nil
}

func (m *memStore) set(f func(m *memStore)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m)
}

// kinds returns the saved kinds of a chat in index order.
func (m *memStore) indexes(chatID string) []uint64 {
	t, err := m.Transcript(context.Background(), chatID)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, ev := range t.Events {
		out = append(out, ev.Index)
	}
	return out
}
