package chatcore

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/transcript"
)

// fakeSoloRecorder is a coordination cluster's solo mark: the calls it got
// and what the next ones answer.
type fakeSoloRecorder struct {
	mu    sync.Mutex
	calls []string // "mark 3", "clear 3"
	err   error    // the next calls' answer
}

func (f *fakeSoloRecorder) MarkSolo(_ context.Context, _ string, epoch uint64, _ string, solo bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	what := "clear"
	if solo {
		what = "mark"
	}
	f.calls = append(f.calls, what+" "+string(rune('0'+epoch)))
	return f.err
}

func (f *fakeSoloRecorder) Solo(context.Context, string, uint64) (bool, error) { return false, nil }

func (f *fakeSoloRecorder) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func soloGauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// TestSoloMarkAlone runs the second copy's UCS fallback's mark without a
// Core: recorded once per epoch, cleared once, a failure to record refuses
// the second copy (UNAVAILABLE) and records nothing, a newer epoch at the
// coordination cluster steps the core down, and a fencer without solo marks
// needs nothing.
func TestSoloMarkAlone(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newMark := func(rec SoloRecorder, downs *[]uint64) *soloMark {
		gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "solo"})
		m := &soloMark{rec: rec, service: "svc", holder: "core-a", timeout: 1e9, gauge: gauge, log: log,
			stepDown: func(_ string, newer uint64) { *downs = append(*downs, newer) }}
		return m
	}

	t.Run("once per epoch, then cleared", func(t *testing.T) {
		rec := &fakeSoloRecorder{}
		var downs []uint64
		m := newMark(rec, &downs)
		for range 3 {
			if err := m.mark(ctx, 3); err != nil {
				t.Fatalf("mark: %v", err)
			}
		}
		if got := soloGauge(t, m.gauge); got != 1 {
			t.Errorf("gauge %v while solo, want 1", got)
		}
		m.clear(ctx)
		m.clear(ctx) // nothing recorded any more: no call
		if got, want := rec.got(), []string{"mark 3", "clear 3"}; !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}
		if got := soloGauge(t, m.gauge); got != 0 || m.epoch.Load() != 0 {
			t.Errorf("after clear: gauge %v, epoch %d; want 0, 0", got, m.epoch.Load())
		}
		if len(downs) != 0 {
			t.Errorf("step-downs %v, want none", downs)
		}
	})

	t.Run("cluster failing refuses the copy and records nothing", func(t *testing.T) {
		rec := &fakeSoloRecorder{err: errors.New("etcd away")}
		var downs []uint64
		m := newMark(rec, &downs)
		if err := m.mark(ctx, 4); status.Code(err) != codes.Unavailable {
			t.Fatalf("mark with the cluster failing: %v, want UNAVAILABLE", err)
		}
		if m.epoch.Load() != 0 || soloGauge(t, m.gauge) != 0 {
			t.Errorf("a failed mark was taken as recorded (epoch %d)", m.epoch.Load())
		}
		rec.mu.Lock()
		rec.err = nil
		rec.mu.Unlock()
		if err := m.mark(ctx, 4); err != nil { // tried again, not remembered as done
			t.Fatalf("mark after recovery: %v", err)
		}
		if got, want := rec.got(), []string{"mark 4", "mark 4"}; !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}
	})

	t.Run("newer epoch steps down", func(t *testing.T) {
		rec := &fakeSoloRecorder{err: &transcript.StaleEpochError{Epoch: 7, Holder: "core-b"}}
		var downs []uint64
		m := newMark(rec, &downs)
		if err := m.mark(ctx, 5); !errors.Is(err, errNotPrimary) {
			t.Fatalf("mark at a stale epoch: %v, want errNotPrimary", err)
		}
		if len(downs) != 1 || downs[0] != 7 {
			t.Errorf("step-downs %v, want one to epoch 7", downs)
		}
	})

	t.Run("forget on step-down", func(t *testing.T) {
		rec := &fakeSoloRecorder{}
		var downs []uint64
		m := newMark(rec, &downs)
		if err := m.mark(ctx, 6); err != nil {
			t.Fatal(err)
		}
		m.forget()
		m.clear(ctx) // forgotten: nothing to clear
		if got, want := rec.got(), []string{"mark 6"}; !slices.Equal(got, want) {
			t.Errorf("calls %v, want %v", got, want)
		}
	})

	t.Run("a fencer without solo marks", func(t *testing.T) {
		var downs []uint64
		m := newSoloMark(StoreFencer{Store: newMemStore()}, testConfig(), prometheus.NewGauge(prometheus.GaugeOpts{Name: "solo"}), log,
			func(_ string, newer uint64) { downs = append(downs, newer) })
		if m.rec != nil {
			t.Skip("StoreFencer records solo marks now")
		}
		if err := m.mark(ctx, 1); err != nil {
			t.Fatalf("mark: %v", err)
		}
		m.clear(ctx)
	})
}

// saveOnlyStore is a TranscriptStore whose Save answers err and records
// the chats it was asked to save; nothing else of it is used.
type saveOnlyStore struct {
	TranscriptStore
	mu    sync.Mutex
	err   error
	saved []string
}

func (f *saveOnlyStore) Save(_ context.Context, req SaveRequest) (SaveResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return SaveResult{}, f.err
	}
	f.saved = append(f.saved, req.ChatID)
	return SaveResult{}, nil
}

// TestUCSCopyAlone runs the second copy's UCS fallback without a Core: the
// solo mark is recorded before the save, a failed mark saves nothing, a
// stale epoch at UCS steps down, and a save that may have landed (UCS
// unavailable) is reported uncertain.
func TestUCSCopyAlone(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	build := func(rec *fakeSoloRecorder, store *saveOnlyStore, downs *[]uint64) *ucsCopy {
		stepDown := func(_ string, newer uint64) { *downs = append(*downs, newer) }
		solo := &soloMark{rec: rec, service: "svc", holder: "core-a", timeout: time.Second,
			gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "solo"}), log: log, stepDown: stepDown}
		return &ucsCopy{solo: solo, store: store, cb: gobreaker.NewCircuitBreaker[SaveResult](gobreaker.Settings{Name: "ucs"}),
			service: "svc", writer: "core-a", timeout: time.Second, copies: prometheus.NewCounter(prometheus.CounterOpts{Name: "copies"}),
			log: log, stepDown: stepDown, isPrimary: func() bool { return true }}
	}
	ev := &chatpb.Event{Index: 2, Epoch: 3, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "hi"}

	t.Run("marked, then saved", func(t *testing.T) {
		rec, store := &fakeSoloRecorder{}, &saveOnlyStore{}
		var downs []uint64
		u := build(rec, store, &downs)
		if uncertain, err := u.copy(ctx, "chat-1", ev, false); err != nil || uncertain {
			t.Fatalf("copy: uncertain %v, %v", uncertain, err)
		}
		if got := rec.got(); !slices.Equal(got, []string{"mark 3"}) {
			t.Errorf("solo calls %v, want [mark 3]", got)
		}
		if !slices.Equal(store.saved, []string{"chat-1"}) {
			t.Errorf("saved %v, want [chat-1]", store.saved)
		}
	})
	t.Run("no mark, no save", func(t *testing.T) {
		rec, store := &fakeSoloRecorder{err: errors.New("etcd away")}, &saveOnlyStore{}
		var downs []uint64
		u := build(rec, store, &downs)
		uncertain, err := u.copy(ctx, "chat-1", ev, true)
		if status.Code(err) != codes.Unavailable || !uncertain {
			t.Fatalf("copy: uncertain %v, %v; want the backup's uncertainty kept and UNAVAILABLE", uncertain, err)
		}
		if len(store.saved) != 0 {
			t.Errorf("saved %v without the solo mark", store.saved)
		}
	})
	t.Run("stale epoch at UCS steps down", func(t *testing.T) {
		rec, store := &fakeSoloRecorder{}, &saveOnlyStore{err: &transcript.StaleEpochError{Epoch: 9}}
		var downs []uint64
		u := build(rec, store, &downs)
		if _, err := u.copy(ctx, "chat-1", ev, false); !errors.Is(err, errNotPrimary) {
			t.Fatalf("copy: %v, want errNotPrimary", err)
		}
		if len(downs) != 1 {
			t.Errorf("step-downs %v, want one", downs)
		}
	})
	t.Run("UCS unavailable: may have landed", func(t *testing.T) {
		rec, store := &fakeSoloRecorder{}, &saveOnlyStore{err: ErrUnavailable}
		var downs []uint64
		u := build(rec, store, &downs)
		uncertain, err := u.copy(ctx, "chat-1", ev, false)
		if status.Code(err) != codes.Unavailable || !uncertain {
			t.Fatalf("copy: uncertain %v, %v; want uncertain and UNAVAILABLE", uncertain, err)
		}
	})
}
