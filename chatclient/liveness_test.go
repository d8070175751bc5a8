package chatclient

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// pacedCore delivers an event every tick on each subscription. Its first
// Send answers late (lateSend, past the attempt timeout, while the streams
// go on delivering: an overloaded core) or never (hangSend: a silent core).
// Once mute is closed, its first subscription stops delivering and hangs,
// and every call hangs, until a second subscription comes (the stream moved).
type pacedCore struct {
	chatpb.UnimplementedChatServer
	tick     time.Duration
	lateSend time.Duration
	hangSend bool
	mute     chan struct{}
	// slowStart delays the first event of every subscription but the
	// first (a new primary busy with everyone's resubscriptions).
	slowStart time.Duration

	mu      sync.Mutex
	sends   int
	subs    int
	resubAt time.Time // when the second subscription arrived (the first, with firstSub)
	// firstSub: resubAt is the first subscription's (a backup's).
	firstSub bool
}

func (p *pacedCore) Send(ctx context.Context, _ *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	p.mu.Lock()
	p.sends++
	first := p.sends == 1
	p.mu.Unlock()
	if first && p.hangSend || p.silent() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if first && p.lateSend > 0 {
		time.Sleep(p.lateSend) // busy: the answer is late whatever the client's deadline
	}
	return &chatpb.SendResponse{Index: 1}, nil
}

func (p *pacedCore) Subscribe(in *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	p.mu.Lock()
	p.subs++
	first := p.subs == 1
	if p.subs == 2 || p.subs == 1 && p.firstSub {
		p.resubAt = time.Now()
	}
	p.mu.Unlock()
	if !first && p.slowStart > 0 {
		select {
		case <-st.Context().Done():
			return st.Context().Err()
		case <-time.After(p.slowStart):
		}
	}
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for i := in.GetFromIndex(); ; i++ {
		if first {
			select {
			case <-p.mute:
				<-st.Context().Done() // silent: nothing more, not even an end
				return st.Context().Err()
			default:
			}
		}
		if err := st.Send(&chatpb.Event{Index: i, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE}); err != nil {
			return err
		}
		select {
		case <-st.Context().Done():
			return st.Context().Err()
		case <-t.C:
		}
	}
}

// silent is true once mute is closed and until a stream has moved (the
// second subscription): the silent core answers no call meanwhile.
func (p *pacedCore) silent() bool {
	select {
	case <-p.mute:
	default:
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.subs < 2
}

func (p *pacedCore) state() (subs int, resubAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.subs, p.resubAt
}

// TestSlowTargetKeepsItsStreams checks the stall rule with one target (a
// sidecar's): a call that times out cancels the target's streams only when
// nothing was heard from it for an attempt timeout. A core that answers one
// call late while its streams deliver keeps them (cancelling them all made
// a new primary, slowed by 20,000 resubscriptions, take them all again,
// over and over); a core gone silent has them moved within the attempt
// timeout, or, when it went silent during the attempt, once it has been
// silent for as long.
func TestSlowTargetKeepsItsStreams(t *testing.T) {
	const attempt = 200 * time.Millisecond
	tests := []struct {
		name      string
		core      *pacedCore
		muteAfter time.Duration // after the send starts; <0: before it
		backup    bool          // a second target, where retries and moved streams go
		wantMoved bool
		within    time.Duration // of the send's start, when moved
	}{
		{name: "late answer, streams delivering", core: &pacedCore{lateSend: 2 * attempt}, muteAfter: -2},
		{name: "silent before the call", core: &pacedCore{hangSend: true}, muteAfter: -1, wantMoved: true, within: attempt + attempt/2},
		{name: "silent during the call", core: &pacedCore{hangSend: true}, muteAfter: attempt / 2, wantMoved: true, within: 2*attempt + attempt/2},
		// The retry is answered elsewhere, so only the Client's second
		// look at the target moves its stream.
		{name: "silent during the call, retried elsewhere", core: &pacedCore{hangSend: true}, muteAfter: attempt / 2, backup: true, wantMoved: true, within: 2*attempt + attempt/2},
		{name: "late answer, retried elsewhere", core: &pacedCore{lateSend: 2 * attempt}, muteAfter: -2, backup: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.core
			p.tick = 10 * time.Millisecond
			p.mute = make(chan struct{})
			addr, _ := serve(t, p)
			cfg := DefaultConfig()
			cfg.Targets = []string{addr}
			moved := func() (bool, time.Time) { subs, at := p.state(); return subs >= 2, at }
			if tt.backup {
				b := &pacedCore{tick: p.tick, mute: make(chan struct{}), firstSub: true}
				addrB, _ := serve(t, b)
				cfg.Targets = append(cfg.Targets, addrB)
				moved = func() (bool, time.Time) { subs, at := b.state(); return subs >= 1, at }
			}
			cfg.AttemptTimeout = attempt
			cfg.RetryFor = 5 * time.Second
			c, err := New(cfg, telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{FromIndex: 1})
			if err != nil {
				t.Fatal(err)
			}
			events := make(chan time.Time, 1024)
			go func() {
				defer close(events)
				for {
					if _, err := st.Recv(); err != nil {
						return
					}
					select {
					case events <- time.Now():
					default:
					}
				}
			}()
			// Wait for the stream to deliver, so the target has been heard.
			select {
			case <-events:
			case <-time.After(5 * time.Second):
				t.Fatal("no event")
			}
			if tt.muteAfter == -1 {
				close(p.mute)
				time.Sleep(3 * p.tick) // let the last event in flight arrive
			}
			start := time.Now()
			if tt.muteAfter > 0 {
				time.AfterFunc(tt.muteAfter, func() { close(p.mute) })
			}
			if _, err := c.Send(ctx, &chatpb.SendRequest{}); err != nil {
				t.Fatalf("send: %v", err)
			}

			if !tt.wantMoved {
				// The stream must go on undisturbed past the look the
				// Client takes an attempt timeout after it last heard the
				// target.
				until := time.Now().Add(2 * attempt)
				for time.Now().Before(until) {
					select {
					case _, ok := <-events:
						if !ok {
							t.Fatal("the stream ended")
						}
					case <-time.After(5 * time.Second):
						t.Fatal("the stream stopped delivering")
					}
				}
				subs, _ := p.state()
				if m, _ := moved(); m || subs != 1 {
					t.Fatalf("%d subscriptions: the slow target's stream was cancelled", subs)
				}
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				if m, at := moved(); m {
					if took := at.Sub(start); took > tt.within {
						t.Fatalf("the stream moved %v after the send started, want within %v", took, tt.within)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the stream stayed on the silent target")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestSilentTargetMovesItsStreamsOnce checks that the many attempts that
// time out on a silent target (every send that was in flight) move its
// streams once, not once each: the streams that moved get a whole attempt
// timeout to be heard before another timed-out attempt can move them again.
func TestSilentTargetMovesItsStreamsOnce(t *testing.T) {
	const attempt = 200 * time.Millisecond
	p := &pacedCore{tick: 10 * time.Millisecond, mute: make(chan struct{}), slowStart: attempt / 2}
	addr, _ := serve(t, p)
	cfg := DefaultConfig()
	cfg.Targets = []string{addr}
	cfg.AttemptTimeout = attempt
	cfg.RetryFor = 5 * time.Second
	c, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.Subscribe(ctx, &chatpb.SubscribeRequest{FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	close(p.mute)
	// Sends in flight on the silent core, their attempts timing out one
	// after another.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(2*i) * time.Millisecond)
			if _, err := c.Send(ctx, &chatpb.SendRequest{}); err != nil {
				t.Errorf("send: %v", err)
			}
		}()
	}
	wg.Wait()
	if subs, _ := p.state(); subs != 2 {
		t.Fatalf("%d subscriptions, want 2: the stream moved %d times", subs, subs-1)
	}
}
