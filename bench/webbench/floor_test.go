package webbench

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/bench/webfloor"
)

// TestMain turns the test binary into the floor server when the floor
// phase starts it as a child process (the role `hachat bench
// web-floor-server` plays).
func TestMain(m *testing.M) {
	if os.Getenv("WEBBENCH_CHILD") != "floor" {
		os.Exit(m.Run())
	}
	fs := flag.NewFlagSet("floor", flag.ExitOnError)
	listen := fs.String("listen", "", "")
	fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("http://%s\n", ln.Addr())
	if err := webfloor.New().Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestFloorPhase runs a small floor phase against the floor server in its
// own process and checks that the report has its figures: every message
// delivered to the agents and the customers, messages/s, latencies, and
// the server's and the load generator's CPU.
func TestFloorPhase(t *testing.T) {
	t.Setenv("WEBBENCH_CHILD", "floor")
	o := Options{Chats: 40, Agents: 3, Messages: 2000, Concurrency: 8, SetupConcurrency: 8, Floor: true,
		FloorCommand: []string{os.Args[0]}}
	o.defaults()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	f, err := runFloor(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if f.Messages != 2000 || f.Errors != 0 || f.Delivered != 2000 {
		t.Errorf("floor: %d sent, %d errors, %d delivered; want 2000, 0, 2000", f.Messages, f.Errors, f.Delivered)
	}
	for name, v := range map[string]float64{
		"messages/s": f.PerSecond, "setup": float64(f.SetupTime), "agent p50": float64(f.P50), "agent p99": float64(f.P99),
		"customer p50": float64(f.PushP50), "server CPU per message": float64(f.ServerCPUPerMessage),
		"load generator CPU per message": float64(f.ClientCPUPerMessage),
	} {
		if v <= 0 {
			t.Errorf("floor %s = %v, want a figure", name, v)
		}
	}
}

// TestReportFloor checks that the floor's figures and the ratio, or the
// floor's failure, reach the text report.
func TestReportFloor(t *testing.T) {
	for _, tc := range []struct {
		name  string
		floor *Floor
		want  []string
	}{
		{"figures", &Floor{Phase: Phase{PerSecond: 10000}, ServerCPUPerMessage: 110 * time.Microsecond},
			[]string{"floor (net/http", "10000 messages/s", "server 110µs", "web / floor         0.50"}},
		{"failure", &Floor{Error: "floor server exited before it listened"},
			[]string{"floor failed: floor server exited before it listened"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Report{Phase: Phase{PerSecond: 5000}, Floor: tc.floor}
			if tc.floor.Error == "" {
				r.RatioToFloor = 0.5
			}
			var b strings.Builder
			r.WriteText(&b)
			for _, want := range tc.want {
				if !strings.Contains(b.String(), want) {
					t.Errorf("text report lacks %q:\n%s", want, b.String())
				}
			}
		})
	}
}
