package chatclient

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// fakePair is one pair's client: it records the calls it got and answers
// StartSession with an id of its pair.
type fakePair struct {
	chatpb.ChatClient // nil: a call the test does not expect panics
	pair              string
	mu                sync.Mutex
	calls             []string
	watch             chan *chatpb.SessionChange // WatchSessions' messages; closed: io.EOF
	watchErr          error                      // WatchSessions refuses with it
}

func (f *fakePair) note(m string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, m)
}

func (f *fakePair) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakePair) StartSession(context.Context, *chatpb.StartSessionRequest, ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	f.note("StartSession")
	return &chatpb.JoinResponse{}, nil
}

func (f *fakePair) Join(context.Context, *chatpb.JoinRequest, ...grpc.CallOption) (*chatpb.JoinResponse, error) {
	f.note("Join")
	return &chatpb.JoinResponse{}, nil
}

func (f *fakePair) Send(context.Context, *chatpb.SendRequest, ...grpc.CallOption) (*chatpb.SendResponse, error) {
	f.note("Send")
	return &chatpb.SendResponse{}, nil
}

func (f *fakePair) Leave(context.Context, *chatpb.LeaveRequest, ...grpc.CallOption) (*chatpb.LeaveResponse, error) {
	f.note("Leave")
	return &chatpb.LeaveResponse{}, nil
}

func (f *fakePair) Events(context.Context, *chatpb.EventsRequest, ...grpc.CallOption) (*chatpb.EventsResponse, error) {
	f.note("Events")
	return &chatpb.EventsResponse{}, nil
}

func (f *fakePair) Subscribe(context.Context, *chatpb.SubscribeRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[chatpb.Event], error) {
	f.note("Subscribe")
	return nil, nil
}

func (f *fakePair) Status(context.Context, *chatpb.StatusRequest, ...grpc.CallOption) (*chatpb.StatusResponse, error) {
	f.note("Status")
	return &chatpb.StatusResponse{}, nil
}

func (f *fakePair) WatchSessions(ctx context.Context, _ *chatpb.WatchSessionsRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[chatpb.SessionChange], error) {
	f.note("WatchSessions")
	if f.watchErr != nil {
		return nil, f.watchErr
	}
	return &fakeWatch{ctx: ctx, ch: f.watch}, nil
}

// fakeWatch delivers the messages of its channel.
type fakeWatch struct {
	grpc.ServerStreamingClient[chatpb.SessionChange]
	ctx context.Context
	ch  chan *chatpb.SessionChange
}

func (w *fakeWatch) Recv() (*chatpb.SessionChange, error) {
	select {
	case m, ok := <-w.ch:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-w.ctx.Done():
		return nil, status.FromContextError(w.ctx.Err()).Err()
	}
}

// threePairs returns a PairClient over fake pairs 1, 2 and 3.
func threePairs(t *testing.T, weights WeightsFunc) (*PairClient, map[string]*fakePair) {
	t.Helper()
	fakes := map[string]*fakePair{}
	clients := map[string]chatpb.ChatClient{}
	for _, p := range []string{"1", "2", "3"} {
		fakes[p] = &fakePair{pair: p, watch: make(chan *chatpb.SessionChange)}
		clients[p] = fakes[p]
	}
	c, err := NewPairClient(clients, weights, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, fakes
}

// TestPairClientRoutesByChat: every call about a chat reaches the client of
// the chat's pair, whatever the weights; a chat of a pair the client does
// not reach is refused with a clear error and reaches no pair.
func TestPairClientRoutesByChat(t *testing.T) {
	ctx := context.Background()
	auth := func(id string) *chatpb.Auth { return &chatpb.Auth{SessionId: id} }
	calls := map[string]func(c *PairClient, id string) error{
		"Join": func(c *PairClient, id string) error {
			_, err := c.Join(ctx, &chatpb.JoinRequest{SessionId: id})
			return err
		},
		"Send": func(c *PairClient, id string) error {
			_, err := c.Send(ctx, &chatpb.SendRequest{Auth: auth(id)})
			return err
		},
		"Leave": func(c *PairClient, id string) error {
			_, err := c.Leave(ctx, &chatpb.LeaveRequest{Auth: auth(id)})
			return err
		},
		"Events": func(c *PairClient, id string) error {
			_, err := c.Events(ctx, &chatpb.EventsRequest{Auth: auth(id)})
			return err
		},
		"Subscribe": func(c *PairClient, id string) error {
			_, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: auth(id)})
			return err
		},
	}
	for _, tc := range []struct {
		id   string
		want string // the pair whose client gets the call; "" refused
	}{
		{"0123abcd", "1"},   // pair 1's ids carry no prefix
		{"2.0123abcd", "2"}, // pair 2's
		{"3.ffff", "3"},
		{"1.0123", "1"},
		{"7.0123", ""}, // a pair this client does not reach
	} {
		for method, call := range calls {
			t.Run(method+"/"+tc.id, func(t *testing.T) {
				c, fakes := threePairs(t, func() map[string]uint32 { return map[string]uint32{"1": 1, "2": 0, "3": 0} })
				err := call(c, tc.id)
				if tc.want == "" {
					if status.Code(err) != codes.Unavailable {
						t.Fatalf("call about %s: err %v, want Unavailable", tc.id, err)
					}
				} else if err != nil {
					t.Fatal(err)
				}
				for p, f := range fakes {
					n := len(f.got())
					if want := 0; p == tc.want {
						if n != 1 {
							t.Fatalf("pair %s got %v for chat %s, want one %s", p, f.got(), tc.id, method)
						}
					} else if n != want {
						t.Fatalf("pair %s got %v for chat %s of pair %q, want nothing", p, f.got(), tc.id, tc.want)
					}
				}
			})
		}
	}
}

// TestPairClientPlacesByWeights: new chats are placed at random in
// proportion to the weights; a pair with weight 0 (draining, degraded)
// gets none; with no weights, or all 0, every new chat goes to pair 1.
func TestPairClientPlacesByWeights(t *testing.T) {
	const n = 6000
	for _, tc := range []struct {
		name    string
		weights map[string]uint32
		want    map[string]float64 // share of the chats per pair
	}{
		{"equal", map[string]uint32{"1": 100, "2": 100, "3": 100}, map[string]float64{"1": 1. / 3, "2": 1. / 3, "3": 1. / 3}},
		{"behind pair takes more", map[string]uint32{"1": 10, "2": 10, "3": 80}, map[string]float64{"1": .1, "2": .1, "3": .8}},
		{"degraded pair gets none", map[string]uint32{"1": 50, "2": 0, "3": 50}, map[string]float64{"1": .5, "3": .5}},
		{"pair 1 drained", map[string]uint32{"1": 0, "2": 30, "3": 10}, map[string]float64{"2": .75, "3": .25}},
		{"unknown pair's weight ignored", map[string]uint32{"1": 10, "9": 1000}, map[string]float64{"1": 1}},
		{"no weights yet", nil, map[string]float64{"1": 1}},
		{"every pair at 0", map[string]uint32{"1": 0, "2": 0, "3": 0}, map[string]float64{"1": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, fakes := threePairs(t, func() map[string]uint32 { return tc.weights })
			for range n {
				if _, err := c.StartSession(context.Background(), &chatpb.StartSessionRequest{}); err != nil {
					t.Fatal(err)
				}
			}
			placed := c.Placed()
			for p, f := range fakes {
				got := len(f.got())
				if int64(got) != placed[p] {
					t.Fatalf("pair %s: %d StartSession calls, Placed says %d", p, got, placed[p])
				}
				want := tc.want[p] * n
				if want == 0 && got != 0 {
					t.Fatalf("pair %s (weight 0) got %d new chats, want none", p, got)
				}
				// Within 10% of the expected count, plus a little slack
				// for small shares (binomial, n=6000: far outside 5 sigma).
				if d := float64(got) - want; d > want/10+30 || -d > want/10+30 {
					t.Fatalf("pair %s got %d of %d new chats, want about %.0f (weights %v)", p, got, n, want, tc.weights)
				}
			}
		})
	}
}

// TestPairClientDefaultsToPairOne: Status and Switchover go to pair 1,
// and a client needs pair 1's client.
func TestPairClientDefaultsToPairOne(t *testing.T) {
	c, fakes := threePairs(t, nil)
	if _, err := c.Status(context.Background(), &chatpb.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := fakes["1"].got(); len(got) != 1 || got[0] != "Status" {
		t.Fatalf("pair 1 got %v, want Status", got)
	}
	if _, err := NewPairClient(map[string]chatpb.ChatClient{"2": &fakePair{}}, nil, 1, nil); err == nil {
		t.Fatal("a client without pair 1 was accepted")
	}
	if _, err := NewPairClient(map[string]chatpb.ChatClient{"1": &fakePair{}, "bad pair": &fakePair{}}, nil, 1, nil); err == nil {
		t.Fatal("a bad pair name was accepted")
	}
}

// TestPairClientWatchesEveryPair: one WatchSessions delivers the changes of
// every pair's watch, fails with the first pair's failure (so the caller
// reopens, and every pair repeats its live chats), and a cancelled caller
// leaves no reader behind.
func TestPairClientWatchesEveryPair(t *testing.T) {
	c, fakes := threePairs(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.WatchSessions(ctx, &chatpb.WatchSessionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"1", "2", "3"} {
		if got := fakes[p].got(); len(got) != 1 || got[0] != "WatchSessions" {
			t.Fatalf("pair %s got %v, want one WatchSessions", p, got)
		}
	}
	want := map[string]bool{}
	for _, id := range []string{"aa", "2.bb", "3.cc", "2.dd"} {
		want[id] = true
		p := "1"
		if id[1] == '.' {
			p = id[:1]
		}
		go func() { fakes[p].watch <- &chatpb.SessionChange{SessionId: id} }()
	}
	for range len(want) {
		ch, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !want[ch.GetSessionId()] {
			t.Fatalf("unexpected or repeated change %v", ch)
		}
		delete(want, ch.GetSessionId())
	}
	// Pair 3's watch ends: the merged stream fails, the others are cancelled.
	close(fakes["3"].watch)
	done := make(chan error, 1)
	go func() {
		ch, err := st.Recv()
		if err == nil {
			err = fmt.Errorf("got %v", ch)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("after pair 3's watch ended: %v, want Unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the merged watch did not fail when pair 3's watch ended")
	}
	m := st.(*mergedWatch)
	m.wg.Wait() // every reader ended

	// A pair that refuses the watch fails WatchSessions itself.
	fakes["2"].watchErr = status.Error(codes.PermissionDenied, "bad token")
	if _, err := c.WatchSessions(ctx, &chatpb.WatchSessionsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("WatchSessions with pair 2 refusing: %v, want PermissionDenied", err)
	}
}

// TestPairWeightsPolls: the weights come from the first control plane that
// answers PairsPath, and stay when every control plane is gone.
func TestPairWeightsPolls(t *testing.T) {
	var mu sync.Mutex
	body := `{"version":"7","pairs":[{"name":"1","weight":10,"state":"serving"},{"name":"2","weight":0,"state":"degraded"},{"name":"3","weight":30}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != PairsPath {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprint(w, body)
	}))
	down := httptest.NewServer(http.NotFoundHandler())
	w, err := NewPairWeights([]string{down.URL, srv.URL}, nil, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Weights() != nil {
		t.Fatalf("weights before any poll: %v", w.Weights())
	}
	if err := w.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{"1": 10, "2": 0, "3": 30}
	if got := w.Weights(); !maps.Equal(got, want) {
		t.Fatalf("weights %v, want %v", got, want)
	}
	c, fakes := threePairs(t, w.Weights)
	for range 400 {
		if _, err := c.StartSession(context.Background(), &chatpb.StartSessionRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(fakes["2"].got()); n != 0 {
		t.Fatalf("degraded pair 2 got %d new chats", n)
	}
	if n1, n3 := len(fakes["1"].got()), len(fakes["3"].got()); n3 < 2*n1 {
		t.Fatalf("pair 1 got %d, pair 3 %d new chats: want about 1:3", n1, n3)
	}
	srv.Close()
	down.Close()
	if err := w.Poll(context.Background()); err == nil {
		t.Fatal("a poll with every control plane gone succeeded")
	}
	if got := w.Weights(); !maps.Equal(got, want) {
		t.Fatalf("weights after a failed poll %v, want the last %v", got, want)
	}
	if _, err := NewPairWeights(nil, nil, time.Second, nil); err == nil {
		t.Fatal("no control plane accepted")
	}
}

// TestPairClientMetrics: the placed counters and weights are exported.
func TestPairClientMetrics(t *testing.T) {
	c, _ := threePairs(t, func() map[string]uint32 { return map[string]uint32{"1": 0, "2": 5, "3": 0} })
	reg := prometheus.NewRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatal(err)
	}
	for range 7 {
		if _, err := c.StartSession(context.Background(), &chatpb.StartSessionRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP hachat_chatclient_pair_placed_total New chats this client placed on the pair.
# TYPE hachat_chatclient_pair_placed_total counter
hachat_chatclient_pair_placed_total{pair="1"} 0
hachat_chatclient_pair_placed_total{pair="2"} 7
hachat_chatclient_pair_placed_total{pair="3"} 0
# HELP hachat_chatclient_pair_weight The pair's placement weight as the control plane last published it (0: no new chat).
# TYPE hachat_chatclient_pair_weight gauge
hachat_chatclient_pair_weight{pair="1"} 0
hachat_chatclient_pair_weight{pair="2"} 5
hachat_chatclient_pair_weight{pair="3"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
