package saver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/transcript"
)

// fakeSession is a session as the saver sees it: a log and its State.
type fakeSession struct {
	mu     sync.Mutex
	id     string
	events []*chatpb.Event
	ended  bool
	st     State
}

func (s *fakeSession) Lock()                              { s.mu.Lock() }
func (s *fakeSession) Unlock()                            { s.mu.Unlock() }
func (s *fakeSession) ID() string                         { return s.id }
func (s *fakeSession) SaveState() *State                  { return &s.st }
func (s *fakeSession) LastIndex() uint64                  { return uint64(len(s.events)) }
func (s *fakeSession) EventLocked(i uint64) *chatpb.Event { return s.events[i-1] }
func (s *fakeSession) EndedLocked() bool                  { return s.ended }
func (s *fakeSession) RemovedLocked() bool                { return false }
func (s *fakeSession) Adopted() (string, uint64, bool)    { return "", 0, false }

// commit appends an event of kind with text.
func (s *fakeSession) commit(kind chatpb.EventKind, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, &chatpb.Event{SessionId: s.id, Index: uint64(len(s.events) + 1), Kind: kind, Text: text, Epoch: 3,
		From: &chatpb.Participant{Id: "p1", Nickname: "Ann", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}})
}

func (s *fakeSession) savedThrough() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.SavedThrough
}

// fakeCore records what the saver asks of the core.
type fakeCore struct {
	mu        sync.Mutex
	progress  []string // session ids reported
	stepDowns []string // reasons
	retries   int
}

func (f *fakeCore) AppendNotice(context.Context, Session, chatpb.EventKind, map[string]string) error {
	return errors.New("fake core: no appends")
}

func (f *fakeCore) EndSession(context.Context, Session, string) error {
	return errors.New("fake core: no appends")
}

func (f *fakeCore) Progress(s Session, _ bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.progress = append(f.progress, s.ID())
}

func (f *fakeCore) StepDown(reason string, _ uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stepDowns = append(f.stepDowns, reason)
}

func (f *fakeCore) RetryDue(Session, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retries++
}

func (f *fakeCore) counts() (progress, stepDowns, retries int, lastReason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.stepDowns) > 0 {
		lastReason = f.stepDowns[len(f.stepDowns)-1]
	}
	return len(f.progress), len(f.stepDowns), f.retries, lastReason
}

// memStore is an in-memory UCS: events by chat and index, fenced by the
// newest epoch per service; down makes every save fail recoverably.
type memStore struct {
	mu     sync.Mutex
	chats  map[string]map[uint64]*chatpb.Event
	epochs map[string]uint64
	down   bool
	saves  int
}

func newMemStore() *memStore {
	return &memStore{chats: map[string]map[uint64]*chatpb.Event{}, epochs: map[string]uint64{}}
}

func (m *memStore) Save(_ context.Context, req transcript.SaveRequest) (transcript.SaveResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saves++
	if m.down {
		return transcript.SaveResult{}, fmt.Errorf("store down: %w", transcript.ErrUnavailable)
	}
	if req.Epoch < m.epochs[req.Service] {
		return transcript.SaveResult{}, fmt.Errorf("epoch %d, store holds %d: %w", req.Epoch, m.epochs[req.Service], transcript.ErrStaleEpoch)
	}
	m.epochs[req.Service] = req.Epoch
	if m.chats[req.ChatID] == nil {
		m.chats[req.ChatID] = map[uint64]*chatpb.Event{}
	}
	for _, ev := range req.Events {
		m.chats[req.ChatID][ev.Index] = ev
	}
	return transcript.SaveResult{}, nil
}

func (m *memStore) held(chat string) (n int, epoch uint64, text3 string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ev := m.chats[chat][3]; ev != nil {
		text3 = ev.Text
	}
	return len(m.chats[chat]), m.epochs["chat"], text3
}

func (m *memStore) set(f func(*memStore)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m)
}

// waitFor polls cond until it holds or 10 s passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// newTestSaver runs a saver over store and fake at epoch 3 until the test
// ends; opts change its Config.
func newTestSaver(t *testing.T, store Store, fake Core, opts ...func(*Config)) *Saver {
	t.Helper()
	rs := role.New()
	rs.BecomePrimary(3, true, nil)
	reg := prometheus.NewRegistry()
	m := Metrics{
		Saves:            prometheus.NewCounterVec(prometheus.CounterOpts{Name: "saves"}, []string{"result"}),
		Resends:          prometheus.NewCounter(prometheus.CounterOpts{Name: "resends"}),
		GiveUps:          prometheus.NewCounter(prometheus.CounterOpts{Name: "give_ups"}),
		ResendsExhausted: prometheus.NewCounter(prometheus.CounterOpts{Name: "exhausted"}),
		Recovered:        prometheus.NewCounter(prometheus.CounterOpts{Name: "recovered"}),
		BreakerState:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "breaker"}),
	}
	cfg := Config{Service: "chat", Writer: "core-a", Keep: func(*chatpb.Event) bool { return true }, OnError: "continue",
		Workers: 2, SaveTimeout: time.Second, ResendAttempts: 2, ResendDelay: 10 * time.Millisecond,
		BreakerTimeout: time.Second, BreakerFailures: 100}
	for _, o := range opts {
		o(&cfg)
	}
	sv := New(fake, store, rs, cfg, m, reg, slog.New(slog.NewTextHandler(io.Discard, nil)), noop.NewTracerProvider().Tracer("test"), time.Now)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return sv
}

// TestSaverAlone runs the transcript saver without package chatcore: a
// fake session, an in-memory store and a fake of what a save may do to the
// core (Core). A save carries the role's epoch and reports progress; a
// store that knows a newer epoch makes the saver ask the core to step down.
func TestSaverAlone(t *testing.T) {
	store := newMemStore()
	fake := &fakeCore{}
	sv := newTestSaver(t, store, fake)

	s := &fakeSession{id: "chat-1"}
	s.commit(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, "")
	s.commit(chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, "")
	s.commit(chatpb.EventKind_EVENT_KIND_MESSAGE, "hello")
	sv.Enqueue(s)
	waitFor(t, "three events saved at epoch 3", func() bool {
		n, epoch, text := store.held("chat-1")
		return n == 3 && epoch == 3 && text == "hello" && s.savedThrough() == 3
	})
	waitFor(t, "progress reported", func() bool { p, _, _, _ := fake.counts(); return p >= 1 })
	if _, n, _, _ := fake.counts(); n != 0 {
		t.Fatalf("%d step downs after a good save", n)
	}

	store.set(func(m *memStore) { m.epochs["chat"] = 4 })
	s.commit(chatpb.EventKind_EVENT_KIND_MESSAGE, "fenced")
	sv.Enqueue(s)
	waitFor(t, "a step down asked for", func() bool { _, n, _, _ := fake.counts(); return n >= 1 })
	if _, _, _, reason := fake.counts(); !strings.Contains(reason, "stale epoch") {
		t.Fatalf("step down reason %q", reason)
	}
	if n, _, _ := store.held("chat-1"); n != 3 || s.savedThrough() != 3 {
		t.Fatalf("the fenced save stored something: %d events, saved through %d", n, s.savedThrough())
	}
}

// TestSaverGivesUpAndRetries: while the store is down a save is resent
// transcript-resend-attempts times, then given up with a retry time the
// core's janitor is asked to look at (RetryDue); PendingRetry before that
// time does nothing, after it the save runs again and lands once the
// store is back.
func TestSaverGivesUpAndRetries(t *testing.T) {
	store := newMemStore()
	store.set(func(m *memStore) { m.down = true })
	fake := &fakeCore{}
	sv := newTestSaver(t, store, fake)

	s := &fakeSession{id: "chat-2"}
	s.commit(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, "")
	sv.Enqueue(s)
	waitFor(t, "the save given up after its resends", func() bool { _, _, r, _ := fake.counts(); return r == 1 })
	store.mu.Lock()
	saves := store.saves
	store.mu.Unlock()
	if saves != 3 { // the first attempt and two resends
		t.Fatalf("%d save attempts before the give-up, want 3", saves)
	}
	s.mu.Lock()
	retryAt := s.st.RetryAt
	s.mu.Unlock()
	if retryAt.IsZero() {
		t.Fatal("no retry time after the give-up")
	}
	store.set(func(m *memStore) { m.down = false })
	sv.PendingRetry(s, retryAt.Add(-time.Millisecond))
	if got := sv.Queued(); got != 0 || s.savedThrough() != 0 {
		t.Fatalf("a retry before its time: %d queued, saved through %d", got, s.savedThrough())
	}
	sv.PendingRetry(s, retryAt)
	waitFor(t, "the retried save landed", func() bool { return s.savedThrough() == 1 })
}
