package clusterctl

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ErrNotServing means a core's grpc.health.v1 service answered, with a
// status other than SERVING.
var ErrNotServing = errors.New("not serving")

// Health asks the grpc.health.v1 service at addr about service ("" asks
// about the server as a whole) and returns nil when it answers SERVING,
// ErrNotServing (wrapped, with the status) when it answers otherwise, and
// the call's error when it does not answer within timeout. It is what a
// Kubernetes readiness probe runs (`hachat ctl health`): the kubelet's own
// gRPC probe speaks no mTLS.
func (ctl Ctl) Health(ctx context.Context, addr, service string, timeout time.Duration) error {
	creds := ctl.Creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return &dialError{addr: addr, err: err}
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return fmt.Errorf("health of %q at %s: %w", service, addr, err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health of %q at %s: %w: %s", service, addr, ErrNotServing, st)
	}
	return nil
}
