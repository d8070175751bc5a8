package clusterctl

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestHealth(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("hachat.Chat", healthpb.HealthCheckResponse_NOT_SERVING)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	for _, tc := range []struct {
		name, addr, service string
		ok                  bool
		notServing          bool
	}{
		{"serving", ln.Addr().String(), "", true, false},
		{"not serving", ln.Addr().String(), "hachat.Chat", false, true},
		{"unknown service", ln.Addr().String(), "nope", false, false},
		{"nothing listens", deadAddr, "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Ctl{}.Health(context.Background(), tc.addr, tc.service, 2*time.Second)
			if tc.ok != (err == nil) {
				t.Fatalf("Health = %v, want ok %v", err, tc.ok)
			}
			if errors.Is(err, ErrNotServing) != tc.notServing {
				t.Fatalf("Health = %v, want ErrNotServing %v", err, tc.notServing)
			}
		})
	}
}
