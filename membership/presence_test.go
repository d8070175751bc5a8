package membership

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
)

// TestPresenceWithdrawsAndReturns: an instance whose readiness check fails
// leaves the cluster (the others see it left) and joins again when the
// check passes, telling OnChange each time.
func TestPresenceWithdrawsAndReturns(t *testing.T) {
	seed := startNode(t, testConfig("seed"), coreMeta(RolePrimary, 1))
	var ready atomic.Bool
	ready.Store(true)
	var mu sync.Mutex
	var changes []bool
	p, err := StartPresence(context.Background(), testConfig("web", seed.localAddr()),
		Meta{Kind: KindWebAPI, HTTPAddr: "127.0.0.1:8082"}, telemetry.Discard(),
		PresenceConfig{Interval: 20 * time.Millisecond, OnChange: func(r bool) {
			mu.Lock()
			changes = append(changes, r)
			mu.Unlock()
		}},
		func(context.Context) error {
			if ready.Load() {
				return nil
			}
			return net.ErrClosed
		})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(context.Background())
	waitFor(t, 5*time.Second, "seed sees web alive", func() bool { return stateOf(seed, "web") == "alive" })
	for _, tt := range []struct {
		ready bool
		state string
	}{{false, "left"}, {true, "alive"}, {false, "left"}, {true, "alive"}} {
		ready.Store(tt.ready)
		waitFor(t, 5*time.Second, "seed sees web "+tt.state, func() bool { return stateOf(seed, "web") == tt.state })
		waitFor(t, time.Second, "Registered", func() bool { return p.Registered() == tt.ready })
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []bool{false, true, false, true}; len(changes) != len(want) {
		t.Errorf("OnChange calls %v, want %v", changes, want)
	}
}
