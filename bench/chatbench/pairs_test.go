package chatbench

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
)

func TestParseStatCPU(t *testing.T) {
	for _, tt := range []struct {
		name string
		stat string
		want time.Duration
		ok   bool
	}{
		{"plain", "1234 (hachat) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0", 3 * time.Second, true},
		{"name with spaces and parens", "1 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0", 30 * time.Millisecond, true},
		{"short", "1 (x) S 1 2 3", 0, false},
		{"no name", "1 x S", 0, false},
		{"not numbers", "1 (x) S 1 2 3 4 5 6 7 8 9 10 a b", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseStatCPU = %v, %v; want %v, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

// fakeStarts answers StartSession with the given ids in turn.
type fakeStarts struct {
	chatpb.ChatClient
	ids []string
}

func (f *fakeStarts) StartSession(context.Context, *chatpb.StartSessionRequest, ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	id := f.ids[0]
	f.ids = f.ids[1:]
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: id}}, nil
}

// TestPlacedClientCountsThePairOfEveryChat: the pair comes from the id
// the core minted (pair 1's ids carry no prefix).
func TestPlacedClientCountsThePairOfEveryChat(t *testing.T) {
	c := &placedClient{ChatClient: &fakeStarts{ids: []string{"9f0c", "2.aa", "2.bb", "3.cc", "ab12"}}, perPair: map[string]int{}}
	for range 5 {
		if _, err := c.StartSession(context.Background(), &chatpb.StartSessionRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]int{"1": 2, "2": 2, "3": 1}
	if len(c.perPair) != len(want) {
		t.Fatalf("per pair %v, want %v", c.perPair, want)
	}
	for p, n := range want {
		if c.perPair[p] != n {
			t.Errorf("per pair %v, want %v", c.perPair, want)
		}
	}
}
