package chatcore

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
