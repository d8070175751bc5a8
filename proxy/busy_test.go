package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBusyHost: a health check timeout of an up host that sent proxied
// bytes within the check's timeout is excused, for maxBusyGrace at most;
// anything else counts: a refused or reset connection, an error that is
// not a timeout, a silent host, a host not up.
func TestBusyHost(t *testing.T) {
	const timeout = 500 * time.Millisecond
	deadline := status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	for _, tc := range []struct {
		name      string
		state     hostState
		rxAgo     time.Duration // 0: never
		busyFor   time.Duration // excused already for this long (0: not yet)
		err       error
		wantBusy  bool
		wantSince bool // busySince set afterwards
	}{
		{"timeout while serving", stateUp, 10 * time.Millisecond, 0, deadline, true, true},
		{"context deadline while serving", stateUp, 10 * time.Millisecond, 0, fmt.Errorf("check: %w", context.DeadlineExceeded), true, true},
		{"still within the grace", stateUp, 10 * time.Millisecond, maxBusyGrace / 2, deadline, true, true},
		{"grace used up", stateUp, 10 * time.Millisecond, maxBusyGrace + time.Second, deadline, false, true},
		{"silent host", stateUp, 2 * timeout, 0, deadline, false, false},
		{"never served", stateUp, 0, 0, deadline, false, false},
		{"refused", stateUp, 10 * time.Millisecond, 0, syscall.ECONNREFUSED, false, false},
		{"not a timeout", stateUp, 10 * time.Millisecond, 0, status.Error(codes.Unavailable, "boom"), false, false},
		{"host down", stateDown, 10 * time.Millisecond, 0, deadline, false, false},
		{"host unknown", stateUnknown, 10 * time.Millisecond, 0, deadline, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Proxy{log: slog.New(slog.DiscardHandler)}
			c := &cluster{info: clusterInfo{hc: healthCheck{Timeout: timeout}}}
			h := &host{addr: "127.0.0.1:1", cluster: c, state: tc.state}
			if tc.rxAgo > 0 {
				h.rx.Store(time.Now().Add(-tc.rxAgo).UnixNano())
			}
			if tc.busyFor > 0 {
				h.busySince = time.Now().Add(-tc.busyFor)
			}
			if got := p.busy(h, tc.err); got != tc.wantBusy {
				t.Errorf("busy = %v, want %v", got, tc.wantBusy)
			}
			if got := !h.busySince.IsZero(); got != tc.wantSince {
				t.Errorf("busySince set = %v, want %v", got, tc.wantSince)
			}
		})
	}
}

// TestPipeMarksTraffic: bytes from the upstream stamp the host's rx (what
// busy reads); bytes from the client alone do not.
func TestPipeMarksTraffic(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{m: m}
	client, clientSide := tcpPair(t)
	upstreamSide, upstream := tcpPair(t)
	var rx atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.pipe(&conn{client: clientSide, upstream: upstreamSide, rx: &rx})
	}()
	deadline := time.Now().Add(5 * time.Second)
	client.SetDeadline(deadline)
	upstream.SetDeadline(deadline)
	if _, err := client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(upstream, buf); err != nil {
		t.Fatal(err)
	}
	if rx.Load() != 0 {
		t.Fatal("client bytes stamped the upstream's traffic time")
	}
	before := time.Now().UnixNano()
	if _, err := upstream.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, buf[:6]); err != nil {
		t.Fatal(err)
	}
	// The pipe stamps rx once its write to the client returned: the
	// client may read the answer a moment before that.
	waitFor(t, 5*time.Second, "rx stamped by the upstream's answer", func() bool { return rx.Load() >= before })
	client.Close()
	upstream.Close()
	<-done
}

// TestDownHostKeepsConnsWithNowhereToGo: a host marked down for failed
// checks keeps its client connections while no other host is chosen (a
// slow host is not cut), loses them when another host is chosen, and loses
// them at once when it is gone (refused or reset).
func TestDownHostKeepsConnsWithNowhereToGo(t *testing.T) {
	for _, tc := range []struct {
		name     string
		gone     bool
		otherUp  bool // a second host, backup, is up (a fallback choice)
		wantKept bool
	}{
		{"slow, nowhere to go", false, false, true},
		{"slow, another host up", false, true, false},
		{"gone", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := newMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			um, err := newUpstreamMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			p := &Proxy{log: slog.New(slog.DiscardHandler), m: m, um: um, changed: make(chan struct{})}
			c := &cluster{name: "chatcore", info: clusterInfo{hc: healthCheck{Timeout: time.Second, Unhealthy: 1, Healthy: 1}}, hosts: map[string]*host{}}
			p.cluster = c
			h := &host{addr: "127.0.0.1:1", cluster: c, state: stateUp, role: "primary", epoch: 2, conns: map[*conn]struct{}{}}
			c.hosts[h.addr] = h
			if tc.otherUp {
				o := &host{addr: "127.0.0.1:2", cluster: c, state: stateUp, role: "backup", epoch: 2, conns: map[*conn]struct{}{}}
				c.hosts[o.addr] = o
			}
			p.mu.Lock()
			p.recomputeLocked("test")
			p.mu.Unlock()
			client, clientSide := tcpPair(t)
			upstreamSide, _ := tcpPair(t)
			cn := &conn{client: clientSide, upstream: upstreamSide}
			h.conns[cn] = struct{}{}
			var cause error = status.Error(codes.DeadlineExceeded, "context deadline exceeded")
			if tc.gone {
				cause = syscall.ECONNREFUSED
			}
			p.report(h, nil, cause)
			p.mu.Lock()
			state, kept := h.state, len(h.conns) == 1
			p.mu.Unlock()
			if state != stateDown {
				t.Fatalf("host state %v after a failed check, want down", state)
			}
			if kept != tc.wantKept {
				t.Fatalf("connections kept = %v, want %v", kept, tc.wantKept)
			}
			client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, rerr := client.Read(make([]byte, 1))
			closed := rerr != nil && !isTimeout(rerr)
			if closed == tc.wantKept {
				t.Fatalf("client connection closed = %v (read: %v), want %v", closed, rerr, !tc.wantKept)
			}
		})
	}
}
