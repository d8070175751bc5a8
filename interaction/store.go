package interaction

import (
	"context"
	"fmt"
	"sync"
)

// StateStore keeps the Interaction Server's state where a second instance
// finds it, and elects the one instance that routes. Only the leader runs
// the queue, the offer timer, the session watch and the chat streams; the
// others forward the agent API to it. Every save is fenced by the leader's
// term: a deposed leader's save fails with ErrNotLeader, so its decisions
// never overwrite the new leader's.
type StateStore interface {
	// Campaign blocks until this instance leads or ctx ends. addr is the
	// base URL the other instances forward the agent API to.
	Campaign(ctx context.Context, addr string) (Term, error)
	// Leader returns the current leader's base URL, or "" when nobody leads.
	Leader(ctx context.Context) (string, error)
	// Load returns the last saved snapshot, or nil when none was saved.
	Load(ctx context.Context) ([]byte, error)
}

// Term is one instance's leadership.
type Term interface {
	// Save stores snap (a JSON Snapshot) if this term still leads, else it
	// fails with ErrNotLeader.
	Save(ctx context.Context, snap []byte) error
	// Done is closed when the term has ended (lease lost or resigned).
	Done() <-chan struct{}
	// Resign ends the term so that another instance takes over at once.
	Resign(ctx context.Context) error
}

// MemStore is a StateStore in memory, shared by the Servers of one process
// (unit tests). Terms follow each other: a Campaign waits until the term
// before it resigns or is ended with Depose.
type MemStore struct {
	mu     sync.Mutex
	snap   []byte
	leader *memTerm
	free   chan struct{} // closed when the current term ends
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{} }

type memTerm struct {
	st   *MemStore
	addr string
	done chan struct{}
	once sync.Once
}

// Campaign implements StateStore.
func (m *MemStore) Campaign(ctx context.Context, addr string) (Term, error) {
	for {
		m.mu.Lock()
		if m.leader == nil {
			t := &memTerm{st: m, addr: addr, done: make(chan struct{})}
			m.leader, m.free = t, make(chan struct{})
			m.mu.Unlock()
			return t, nil
		}
		free := m.free
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("campaign: %w", ctx.Err())
		case <-free:
		}
	}
}

// Leader implements StateStore.
func (m *MemStore) Leader(context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.leader == nil {
		return "", nil
	}
	return m.leader.addr, nil
}

// Load implements StateStore.
func (m *MemStore) Load(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap, nil
}

// Depose ends the current term as a lost lease would.
func (m *MemStore) Depose() {
	m.mu.Lock()
	t := m.leader
	m.mu.Unlock()
	if t != nil {
		t.end()
	}
}

func (t *memTerm) end() {
	t.once.Do(func() {
		close(t.done)
		t.st.mu.Lock()
		if t.st.leader == t {
			t.st.leader = nil
			close(t.st.free)
		}
		t.st.mu.Unlock()
	})
}

func (t *memTerm) Save(_ context.Context, snap []byte) error {
	t.st.mu.Lock()
	defer t.st.mu.Unlock()
	if t.st.leader != t {
		return ErrNotLeader
	}
	t.st.snap = snap
	return nil
}

func (t *memTerm) Done() <-chan struct{} { return t.done }

func (t *memTerm) Resign(context.Context) error {
	t.end()
	return nil
}
