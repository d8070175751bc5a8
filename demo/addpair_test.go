package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// TestAddPairThroughTheControlSocket: `hachat demo add-pair` (the control
// socket) starts the next pair's two parts in the running cluster, the
// state file lists them with their pair, and the parts already running are
// left alone; past MaxPairs it is refused and nothing starts.
func TestAddPairThroughTheControlSocket(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	plan := fakePlan(t, "core-a", "core-b")
	plan.Parts[0].Pair, plan.Parts[1].Pair = "1", "1"
	dir := t.TempDir()
	state := dir + "/demo.json"
	var asked atomic.Int32
	sup, err := Start(t.Context(), plan, Options{Binary: exe, Dir: dir, StatePath: state, Control: ControlPath(state),
		Progress: &telemetrytest.LogBuffer{}, Env: []string{"HACHAT_DEMO_FAKE=1"}, ReadyTimeout: 10 * time.Second, Grace: time.Second,
		NewPair: func(p int) ([]Part, error) {
			asked.Store(int32(p))
			if p > 2 {
				return nil, fmt.Errorf("%w: test allows two pairs", ErrNoNewPair)
			}
			parts := fakePlan(t, fmt.Sprintf("core-%da", p), fmt.Sprintf("core-%db", p)).Parts
			for i := range parts {
				parts[i].Pair = fmt.Sprint(p)
			}
			return parts, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sup.Stop)
	pidA, _ := sup.PID("core-a")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := RequestAddPair(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	if res.Pair != "2" || asked.Load() != 2 || len(res.Parts) != 2 {
		t.Fatalf("add-pair = %+v (asked for pair %d)", res, asked.Load())
	}
	st, err := ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"core-2a", "core-2b"} {
		p, ok := st.Part(name)
		if !ok || p.Pair != "2" || p.State != StateRunning {
			t.Errorf("state file %s: %+v (listed %v)", name, p, ok)
		}
	}
	if pid, _ := sup.PID("core-a"); pid != pidA {
		t.Errorf("core-a restarted: pid %d, was %d", pid, pidA)
	}
	if _, err := RequestAddPair(ctx, state); !errors.Is(err, ErrNoNewPair) {
		t.Fatalf("third pair: %v, want ErrNoNewPair", err)
	}
	if n := len(sup.Plan().Parts); n != 4 {
		t.Fatalf("plan has %d parts after a refused add, want 4", n)
	}
}
