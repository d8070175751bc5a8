package chatcore

import (
	"context"
	"errors"
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
)

// fakeSaverCore records what the saver asks of the core.
type fakeSaverCore struct {
	mu        sync.Mutex
	progress  []string // session ids reported
	stepDowns []string // reasons
}

func (f *fakeSaverCore) append(context.Context, *session, prepareFunc) (uint64, bool, error) {
	return 0, false, errors.New("fake core: no appends")
}

func (f *fakeSaverCore) endSession(context.Context, *session, string) error {
	return errors.New("fake core: no appends")
}

func (f *fakeSaverCore) replicateProgress(s *session, _ bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.progress = append(f.progress, s.id)
}

func (f *fakeSaverCore) retryDue(*session, time.Time) {}

func (f *fakeSaverCore) stepDown(reason string, _ uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stepDowns = append(f.stepDowns, reason)
}

func (f *fakeSaverCore) counts() (progress, stepDowns int, lastReason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.stepDowns) > 0 {
		lastReason = f.stepDowns[len(f.stepDowns)-1]
	}
	return len(f.progress), len(f.stepDowns), lastReason
}

// TestSaverAlone runs the transcript saver without a Core: a session's log,
// an in-memory store and a fake of the four things a save may do to the
// core (saverCore). A save carries the role's epoch and reports progress;
// a store that knows a newer epoch makes the saver ask the core to step
// down.
func TestSaverAlone(t *testing.T) {
	store := newMemStore()
	fake := &fakeSaverCore{}
	rs := role.New()
	rs.BecomePrimary(3, true, nil)
	cfg := DefaultConfig()
	cfg.Name, cfg.TranscriptAutoSave = "core-a", AutoSaveEveryMessage
	cfg.TranscriptResendDelay = 10 * time.Millisecond
	notices, err := ParseSaveNotices(cfg.TranscriptSaveNotices)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sv := &saver{core: fake, store: store, role: rs, cfg: cfg, notices: notices, m: newMetrics(reg),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), tracer: noop.NewTracerProvider().Tracer("test"), now: time.Now}
	sv.init(reg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sv.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	s := newSession("chat-1")
	commit := func(kind chatpb.EventKind, from *chatpb.Participant, text string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.log.Commit(&chatpb.Event{SessionId: s.id, Index: s.lastIndex() + 1, Kind: kind, From: from, Text: text, Epoch: 3})
	}
	commit(chatpb.EventKind_EVENT_KIND_SESSION_STARTED, systemParticipant, "")
	commit(chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, pCust, "")
	commit(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust, "hello")
	sv.enqueue(s)
	waitFor(t, "three events saved at epoch 3", func() bool {
		tr, err := store.Transcript(ctx, "chat-1")
		e, eerr := store.Epoch(ctx, cfg.Cluster)
		return err == nil && eerr == nil && len(tr.Events) == 3 && tr.Events[2].Text == "hello" && e.Epoch == 3
	})
	waitFor(t, "progress reported", func() bool { p, _, _ := fake.counts(); return p >= 1 })
	if _, n, _ := fake.counts(); n != 0 {
		t.Fatalf("%d step downs after a good save", n)
	}

	store.set(func(m *memStore) { m.epochs[cfg.Cluster] = Epoch{Epoch: 4, Holder: "core-b"} })
	commit(chatpb.EventKind_EVENT_KIND_MESSAGE, pCust, "fenced")
	sv.enqueue(s)
	waitFor(t, "a step down asked for", func() bool { _, n, _ := fake.counts(); return n >= 1 })
	if _, _, reason := fake.counts(); !strings.Contains(reason, "stale epoch") {
		t.Fatalf("step down reason %q", reason)
	}
	if idx := store.indexes("chat-1"); len(idx) != 3 {
		t.Fatalf("the fenced save stored something: indexes %v", idx)
	}
}
