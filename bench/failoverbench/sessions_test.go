package failoverbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// fakeChat is a chatpb.ChatClient that records the calls of the sessions'
// set-up (any other call panics on the nil embedded interface).
type fakeChat struct {
	chatpb.ChatClient
	failStart int // StartSession number that fails (0: none)

	mu      sync.Mutex
	started int
	joined  map[string]int // session id -> agent joins
	sent    map[string]int // session id -> customer messages
}

var errFake = errors.New("fake: refused")

func (f *fakeChat) StartSession(_ context.Context, in *chatpb.StartSessionRequest, _ ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started++
	if f.started == f.failStart {
		return nil, errFake
	}
	id := fmt.Sprintf("s%d", f.started)
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: id, ParticipantId: "customer", SecureKey: "k"}}, nil
}

func (f *fakeChat) Join(_ context.Context, in *chatpb.JoinRequest, _ ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in.GetType() != chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT || in.GetServiceToken() != "svc" {
		return nil, fmt.Errorf("fake: join of %v with token %q", in.GetType(), in.GetServiceToken())
	}
	f.joined[in.GetSessionId()]++
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: in.GetSessionId(), ParticipantId: "agent"}}, nil
}

func (f *fakeChat) Send(_ context.Context, in *chatpb.SendRequest, _ ...grpc.CallOption) (*chatpb.SendResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in.GetAuth().GetParticipantId() != "customer" || in.GetKind() != chatpb.EventKind_EVENT_KIND_MESSAGE {
		return nil, fmt.Errorf("fake: send by %q of %v", in.GetAuth().GetParticipantId(), in.GetKind())
	}
	f.sent[in.GetAuth().GetSessionId()]++
	return &chatpb.SendResponse{}, nil
}

// TestOpenSessions: --sessions N opens N sessions, each with the customer
// started, the agent joined and one customer message; a negative N is
// refused before any call; a failed call stops the set-up with its error.
func TestOpenSessions(t *testing.T) {
	for _, tc := range []struct {
		name        string
		sessions    int
		concurrency int
		failStart   int
		wantErr     string // substring; empty: no error
		wantErrIs   error
		wantLines   []string
	}{
		{name: "none", sessions: 0, wantLines: []string{"0 live sessions ready"}},
		{name: "a few on the default concurrency", sessions: 7, wantLines: []string{"7 live sessions ready"}},
		{name: "more than one progress step", sessions: 2500, concurrency: 8,
			wantLines: []string{"  1000/2500 sessions", "  2000/2500 sessions", "2500 live sessions ready"}},
		{name: "negative", sessions: -1, wantErr: "sessions must be 0 or more"},
		{name: "negative concurrency", sessions: 3, concurrency: -2, wantErr: "concurrency"},
		{name: "a start fails", sessions: 50, concurrency: 4, failStart: 20, wantErr: "start live session", wantErrIs: errFake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeChat{failStart: tc.failStart, joined: map[string]int{}, sent: map[string]int{}}
			var progress bytes.Buffer
			err := OpenSessions(context.Background(), f, Options{Sessions: tc.sessions, SetupConcurrency: tc.concurrency, ServiceToken: "svc"}, &progress)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				if tc.wantErrIs != nil && !errors.Is(err, tc.wantErrIs) {
					t.Fatalf("error %v does not wrap %v", err, tc.wantErrIs)
				}
				if tc.sessions < 0 && f.started != 0 {
					t.Fatalf("%d sessions started for an invalid count", f.started)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.started != tc.sessions || len(f.joined) != tc.sessions || len(f.sent) != tc.sessions {
				t.Fatalf("started %d, joined %d, sent in %d sessions; want %d each", f.started, len(f.joined), len(f.sent), tc.sessions)
			}
			for id, n := range f.joined {
				if n != 1 || f.sent[id] != 1 {
					t.Fatalf("session %s: %d joins and %d messages, want 1 and 1", id, n, f.sent[id])
				}
			}
			for _, want := range tc.wantLines {
				if !strings.Contains(progress.String(), want) {
					t.Errorf("progress %q lacks %q", progress.String(), want)
				}
			}
		})
	}
}

// TestRunRefusesNegativeSessions: Run checks the options before it touches
// the cluster (nil client and cluster: a call would panic).
func TestRunRefusesNegativeSessions(t *testing.T) {
	if _, err := Run(context.Background(), nil, nil, Options{Sessions: -5}, nil); err == nil || !strings.Contains(err.Error(), "got -5") {
		t.Fatalf("Run with sessions -5: %v, want the count refused", err)
	}
}
