package chatclient

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pairs"
)

// pairEcho records the pair header of every call.
type pairEcho struct {
	chatpb.UnimplementedChatServer
	mu  sync.Mutex
	got map[string][]string
}

func (p *pairEcho) note(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got[method] = md.Get(pairs.Header)
}

func (p *pairEcho) StartSession(ctx context.Context, _ *chatpb.StartSessionRequest) (*chatpb.JoinResponse, error) {
	p.note(ctx, "StartSession")
	return &chatpb.JoinResponse{}, nil
}

func (p *pairEcho) Join(ctx context.Context, _ *chatpb.JoinRequest) (*chatpb.JoinResponse, error) {
	p.note(ctx, "Join")
	return &chatpb.JoinResponse{}, nil
}

func (p *pairEcho) Send(ctx context.Context, _ *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	p.note(ctx, "Send")
	return &chatpb.SendResponse{}, nil
}

func (p *pairEcho) Events(ctx context.Context, _ *chatpb.EventsRequest) (*chatpb.EventsResponse, error) {
	p.note(ctx, "Events")
	return &chatpb.EventsResponse{}, nil
}

func (p *pairEcho) Subscribe(_ *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	p.note(st.Context(), "Subscribe")
	return st.Send(&chatpb.Event{Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED})
}

// TestCallsNameTheirChatsPair: every call about a chat carries the pair
// its id names (x-hachat-pair), the routing key of the control plane's
// routes; a new chat's start carries none.
func TestCallsNameTheirChatsPair(t *testing.T) {
	echo := &pairEcho{got: map[string][]string{}}
	addr, _ := serve(t, echo)
	c := newClient(t, addr)
	ctx := context.Background()
	two := &chatpb.Auth{SessionId: pairs.ChatID("2", "abc")}
	if _, err := c.StartSession(ctx, &chatpb.StartSessionRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, &chatpb.SendRequest{Auth: two}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(ctx, &chatpb.JoinRequest{SessionId: "3.def"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Events(ctx, &chatpb.EventsRequest{Auth: &chatpb.Auth{SessionId: "0123abcd"}}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: two})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"StartSession": "", "Send": "2", "Join": "3", "Events": "1", "Subscribe": "2"}
	echo.mu.Lock()
	defer echo.mu.Unlock()
	for m, w := range want {
		got := echo.got[m]
		if w == "" && len(got) != 0 || w != "" && (len(got) != 1 || got[0] != w) {
			t.Errorf("%s carried pair %v, want %q", m, got, w)
		}
	}
}
