package chatcore

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// TestErrorMapping is rpc.go's error table: each sentinel the operations
// refuse with, and the gRPC code a client gets for it (its retry rules read
// the code: UNAVAILABLE is "try again, here or at the other core"). A
// sentinel wrapped with %w keeps its code.
func TestErrorMapping(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"errBadKey", errBadKey, codes.PermissionDenied},
		{"errBadToken", errBadToken, codes.PermissionDenied},
		{"errUnknown", errUnknown, codes.NotFound},
		{"errLeft", errLeft, codes.FailedPrecondition},
		{"errEnded", errEnded, codes.FailedPrecondition},
		{"errKeyNotHeld", errKeyNotHeld, codes.AlreadyExists},
		{"errNotPrimary", errNotPrimary, codes.Unavailable},
		{"errHandedOver", errHandedOver, codes.Unavailable},
		{"errDraining", errDraining, codes.Unavailable},
		{"errRestoring", errRestoring, codes.Unavailable},
		{"invalid", invalid("x is %d", 1), codes.InvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := grpcCode(tt.err); got != tt.code {
				t.Errorf("%s: code %s, want %s", tt.name, got, tt.code)
			}
			if got := grpcCode(fmt.Errorf("wrapped: %w", tt.err)); got != tt.code {
				t.Errorf("%s wrapped: code %s, want %s", tt.name, got, tt.code)
			}
		})
	}
}

// TestRPCErrorCodes drives each handler over gRPC into a refusal and checks
// the status the client gets is the table's sentinel (code and message), so
// a handler that mapped or rewrote an operation's error would fail here.
func TestRPCErrorCodes(t *testing.T) {
	tc := startCore(t, nil)
	ctx := ctxT(t)
	cust, agent := tc.chat(t)
	gone, _ := tc.chat(t)
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: agent}); err != nil {
		t.Fatalf("agent leave: %v", err)
	}
	if _, err := tc.cl.Leave(ctx, &chatpb.LeaveRequest{Auth: gone}); err != nil {
		t.Fatalf("customer leave: %v", err)
	}
	wrongKey := &chatpb.Auth{SessionId: cust.SessionId, ParticipantId: cust.ParticipantId, SecureKey: "not-the-key"}
	unknown := &chatpb.Auth{SessionId: cust.SessionId + "-nope", ParticipantId: "p1", SecureKey: "k"}

	for _, tt := range []struct {
		name string
		call func(context.Context) error
		want error // a sentinel; nil: only the code is checked
		code codes.Code
	}{
		{"Join with a wrong service token", func(ctx context.Context) error {
			_, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: cust.SessionId, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "wrong"})
			return err
		}, errBadToken, codes.PermissionDenied},
		{"Send with a wrong key", func(ctx context.Context) error {
			_, err := tc.cl.Send(ctx, msg(wrongKey, "hi", ""))
			return err
		}, errBadKey, codes.PermissionDenied},
		{"Events of an unknown session", func(ctx context.Context) error {
			_, err := tc.cl.Events(ctx, &chatpb.EventsRequest{Auth: unknown})
			return err
		}, errUnknown, codes.NotFound},
		{"Send after leaving", func(ctx context.Context) error {
			_, err := tc.cl.Send(ctx, msg(agent, "hi", ""))
			return err
		}, errLeft, codes.FailedPrecondition},
		{"Join an ended session", func(ctx context.Context) error {
			_, err := tc.cl.Join(ctx, &chatpb.JoinRequest{SessionId: gone.SessionId, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT, ServiceToken: "svc-token"})
			return err
		}, errEnded, codes.FailedPrecondition},
		{"Send an empty message", func(ctx context.Context) error {
			_, err := tc.cl.Send(ctx, msg(cust, " ", ""))
			return err
		}, nil, codes.InvalidArgument},
		{"Events past the end", func(ctx context.Context) error {
			_, err := tc.cl.Events(ctx, &chatpb.EventsRequest{Auth: cust, FromIndex: 1000})
			return err
		}, nil, codes.InvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(ctx)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %s (%v), want %s", got, err, tt.code)
			}
			if tt.want != nil && status.Convert(err).Message() != status.Convert(tt.want).Message() {
				t.Errorf("message %q, want the sentinel's %q", status.Convert(err).Message(), status.Convert(tt.want).Message())
			}
		})
	}
}
