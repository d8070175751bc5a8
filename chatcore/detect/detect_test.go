package detect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/membership"
)

// fakeNet scripts what the detector sees and counts what it asked.
type fakeNet struct {
	mu        sync.Mutex
	dial      error // nil: the probe connects
	peer      *Peer // nil: Status does not answer
	witness   *bool // nil: no witness; else whether it reaches the primary
	witnessUp bool  // the witness answers
	authority bool  // the fencing authority answers
	dials     int
	asked     []string // witness targets
}

func (n *fakeNet) Dial(context.Context, string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dials++
	return n.dial
}

func (n *fakeNet) Status(context.Context, string) (Peer, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.peer == nil {
		return Peer{}, false
	}
	return *n.peer, true
}

func (n *fakeNet) Witness(_ context.Context, target string) (bool, bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.witness == nil {
		return false, false, nil
	}
	n.asked = append(n.asked, target)
	if !n.witnessUp {
		return false, true, errors.New("witness timeout")
	}
	return *n.witness, true, nil
}

func (n *fakeNet) AuthorityAnswers(context.Context) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.authority
}

func (n *fakeNet) set(f func(n *fakeNet)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(n)
}

// fakeMembers is a fixed gossip view with a scripted event stream.
type fakeMembers struct {
	members []membership.Member
	events  chan membership.Event
}

func (m *fakeMembers) Members() []membership.Member { return m.members }
func (m *fakeMembers) Subscribe() (<-chan membership.Event, func()) {
	return m.events, func() { close(m.events) }
}

var (
	refused = fmt.Errorf("dial tcp 10.0.0.1:7000: %w", syscall.ECONNREFUSED)
	timeout = errors.New("dial tcp 10.0.0.1:7000: i/o timeout")
	yes, no = true, false
	now     = time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC) // the fixed clock
)

const (
	primaryAddr = "10.0.0.1:7000"
	lease       = time.Second
)

func core(name string, state membership.State, since time.Time) membership.Member {
	return membership.Member{Name: name, State: state, Since: since,
		Meta: membership.Meta{Kind: membership.KindCore, GRPCAddr: "gossiped-" + name}}
}

func other(name string, state membership.State, since time.Time) membership.Member {
	return membership.Member{Name: name, State: state, Since: since, Meta: membership.Meta{Kind: membership.KindXDS}}
}

func newTestDetector(n Net, members Members) *Detector {
	return New(Config{Name: "core-b"}, n, members, func() time.Time { return now }, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// TestDecide runs each rule of docs/chatcore.md "Safety rules of
// promotion" (and the detection ladder of the package doc) against a
// scripted network and gossip view at a fixed time.
func TestDecide(t *testing.T) {
	recently, longAgo := now.Add(-10*time.Second), now.Add(-2*time.Minute)
	// cutOffView: the primary and every third party failed recently; only
	// this core is alive.
	cutOffView := []membership.Member{core("core-b", membership.StateAlive, recently),
		core("core-a", membership.StateDead, recently), other("xds", membership.StateDead, recently)}
	cases := []struct {
		name    string
		net     fakeNet
		members []membership.Member // nil: no gossip
		saw     bool                // the backup replicated from a primary
		gossip  bool                // membership declared the primary failed
		end     StreamEnd
		want    Outcome
		certain bool
		stale   bool
		noCheck bool // the checks must not even run
	}{
		{name: "refused and the witness cannot reach it: certain, the claim skips the lease",
			net: fakeNet{dial: refused, witness: &no, witnessUp: true}, saw: true, end: StreamEnd{Synced: true},
			want: Promote, certain: true},
		{name: "refused, the witness silent: dead but uncertain, the claim waits for the lease",
			net: fakeNet{dial: refused, witness: &no}, saw: true, end: StreamEnd{Synced: true},
			want: Promote, stale: true},
		{name: "a probe timeout the witness confirms is not certain (a cut path)",
			net: fakeNet{dial: timeout, witness: &no, witnessUp: true}, saw: true, end: StreamEnd{Synced: true},
			want: Promote, stale: true},
		{name: "the witness reaches the primary: alive, resync",
			net: fakeNet{dial: timeout, witness: &yes, witnessUp: true}, saw: true, end: StreamEnd{Synced: true},
			want: Alive, stale: true},
		{name: "a restarted peer answering as backup: certain",
			net: fakeNet{peer: &Peer{Role: role.Backup, Epoch: 4}}, saw: true, end: StreamEnd{Synced: true},
			want: Promote, certain: true},
		{name: "the probe connects and the primary answers: alive",
			net: fakeNet{peer: &Peer{Role: role.Primary, Epoch: 4}}, saw: true, end: StreamEnd{ReceivedAny: true},
			want: Alive, stale: true},
		{name: "the probe connects, Status silent, no gossip: the silence decides",
			net: fakeNet{}, saw: true, end: StreamEnd{Synced: true},
			want: Promote, stale: true},
		{name: "the probe connects, Status silent, gossip shows it alive: wait for gossip",
			net: fakeNet{}, saw: true, end: StreamEnd{Synced: true},
			members: []membership.Member{core("core-a", membership.StateAlive, recently)},
			want:    Alive, stale: true},
		{name: "gossip is evidence, not a verdict: declared failed but the primary answers",
			net: fakeNet{peer: &Peer{Role: role.Primary, Epoch: 4}}, gossip: true,
			members: []membership.Member{core("core-a", membership.StateDead, recently)},
			want:    GossipRefuted},
		{name: "gossip is evidence, not a verdict: the one cut off does not promote",
			net: fakeNet{dial: refused, witness: &no}, gossip: true, saw: true, members: cutOffView,
			end: StreamEnd{Synced: true}, want: Alive, stale: true},
		{name: "gossip declared failed and the checks confirm it",
			net: fakeNet{dial: refused, witness: &no, witnessUp: true}, gossip: true, saw: true,
			members: []membership.Member{core("core-a", membership.StateDead, recently)},
			end:     StreamEnd{Synced: true}, want: Promote, certain: true},
		{name: "cut off from everyone but the fencing authority answers: not isolated",
			net: fakeNet{dial: refused, witness: &no, authority: true}, saw: true, members: cutOffView,
			end: StreamEnd{Synced: true}, want: Promote, stale: true},
		{name: "members lost over a minute ago are no third party: not isolated",
			net: fakeNet{dial: refused, witness: &no}, saw: true,
			members: []membership.Member{core("core-a", membership.StateDead, recently), other("xds", membership.StateDead, longAgo)},
			end:     StreamEnd{Synced: true}, want: Promote, stale: true},
		{name: "a backup that never replicated from a primary never promotes on a probe alone",
			net: fakeNet{dial: refused, witness: &no, witnessUp: true}, want: Stay, noCheck: true},
		{name: "a fenced primary is no reason to promote without gossip",
			net: fakeNet{dial: refused, witness: &no, witnessUp: true}, saw: true, end: StreamEnd{ReceivedAny: true, FencedPrimary: true},
			want: Stay, noCheck: true},
	}
	for i := range cases {
		tc := &cases[i]
		t.Run(tc.name, func(t *testing.T) {
			var members Members
			if tc.members != nil {
				members = &fakeMembers{members: tc.members}
			}
			n := &tc.net
			d := newTestDetector(n, members)
			if tc.saw {
				d.Heard("core-a")
			}
			if tc.gossip {
				d.gossipDead.Store(true)
			}
			dec := d.Decide(context.Background(), primaryAddr, tc.end)
			if dec.Outcome != tc.want || dec.Certain != tc.certain || dec.Stale != tc.stale {
				t.Fatalf("decided %+v, want outcome %d certain %v stale %v", dec, tc.want, tc.certain, tc.stale)
			}
			wantWait := lease
			if tc.certain {
				wantWait = 0
			}
			if dec.Outcome == Promote && dec.IfSilent(lease) != wantWait {
				t.Fatalf("the claim waits %s for the lease, want %s", dec.IfSilent(lease), wantWait)
			}
			if tc.noCheck && n.dials != 0 {
				t.Fatalf("the checks ran (%d probes)", n.dials)
			}
			if tc.members != nil && len(n.asked) > 0 && n.asked[0] != "gossiped-core-a" {
				t.Fatalf("asked the witness about %q, want the primary's gossiped address", n.asked[0])
			}
		})
	}
}

// TestRecheckBeforeTheClaim: a decision is only as good as the moment it
// was made. The re-check the claim runs looks again: a primary that
// answers by then drops the promotion with ErrPrimaryAlive, one still dead
// lets it go on.
func TestRecheckBeforeTheClaim(t *testing.T) {
	n := &fakeNet{dial: refused, witness: &no, witnessUp: true}
	d := newTestDetector(n, nil)
	d.Heard("core-a")
	if dec := d.Decide(context.Background(), primaryAddr, StreamEnd{Synced: true}); dec.Outcome != Promote {
		t.Fatalf("decided %+v, want a promotion", dec)
	}
	if err := d.Recheck(context.Background(), primaryAddr); err != nil {
		t.Fatalf("re-check of a primary still dead: %v", err)
	}
	n.set(func(n *fakeNet) { n.dial, n.peer = nil, &Peer{Role: role.Primary, Epoch: 4} }) // it came back while the claim waited
	if err := d.Recheck(context.Background(), primaryAddr); !errors.Is(err, ErrPrimaryAlive) {
		t.Fatalf("re-check of a primary that answers: %v, want ErrPrimaryAlive", err)
	}
	n.set(func(n *fakeNet) { n.dial, n.peer, n.witnessUp, n.authority = refused, nil, false, false })
	d.members = &fakeMembers{members: []membership.Member{core("core-a", membership.StateDead, now), other("xds", membership.StateDead, now)}}
	if err := d.Recheck(context.Background(), primaryAddr); !errors.Is(err, ErrPrimaryAlive) {
		t.Fatalf("re-check of a core cut off meanwhile: %v, want ErrPrimaryAlive", err)
	}
}

// TestWatchGossip: membership declaring the primary failed signals the
// follower and is remembered until the primary is seen alive again; a core
// of another pair, or this core, failing is no signal.
func TestWatchGossip(t *testing.T) {
	m := &fakeMembers{events: make(chan membership.Event)}
	d := newTestDetector(&fakeNet{}, m)
	d.Heard("core-a")
	failed, stop := d.Watch(func() string { return "gossiped-core-a" })
	defer stop()
	otherPair := core("core-2a", membership.StateDead, now)
	otherPair.Meta.Pair = "2"
	m.events <- membership.Event{Type: membership.EventFailed, Member: otherPair}
	m.events <- membership.Event{Type: membership.EventFailed, Member: core("core-b", membership.StateDead, now)}
	m.events <- membership.Event{Type: membership.EventFailed, Member: core("core-a", membership.StateDead, now)}
	select {
	case <-failed:
	case <-time.After(10 * time.Second):
		t.Fatal("no signal when the primary was declared failed")
	}
	if !d.GossipDead() {
		t.Fatal("the failure is not remembered")
	}
	select {
	case <-failed:
		t.Fatal("signalled twice: another pair's core or this core counted")
	default:
	}
	m.events <- membership.Event{Type: membership.EventJoined, Member: core("core-a", membership.StateAlive, now)}
	m.events <- membership.Event{Type: membership.EventUpdated, Member: core("core-x", membership.StateAlive, now)} // ordered after the join
	if d.GossipDead() {
		t.Fatal("the primary is alive again, still remembered as failed")
	}
}
