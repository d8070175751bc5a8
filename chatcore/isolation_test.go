package chatcore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
)

// These tests hold issue 12's safety rules, in process and deterministic:
// a decision to promote is confirmed again immediately before the epoch
// claim; a backup cut off from everyone never deposes a healthy primary;
// a new primary serves nothing until its log holds what UCS holds.

// cutStore is a core's view of UCS that a test can cut: while down, every
// call fails as an unreachable UCS would (ErrUnavailable); while held,
// transcript reads wait for release. The pair, security and isolation
// tests share it.
type cutStore struct {
	*memStore
	mu      sync.Mutex
	down    bool
	ucsOnly bool          // down cuts UCS only, not the coordination cluster (cutFencer)
	held    chan struct{} // closed to release held reads; nil: not held
	epochs  int           // Epoch calls while down
	waiting int           // transcript reads waiting for release
}

func (s *cutStore) setDown(down bool) { s.mu.Lock(); s.down = down; s.mu.Unlock() }

func (s *cutStore) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return fmt.Errorf("ucs unreachable: %w", ErrUnavailable)
	}
	return nil
}

func (s *cutStore) Epoch(ctx context.Context, service string) (Epoch, error) {
	s.mu.Lock()
	if s.down {
		s.epochs++
	}
	s.mu.Unlock()
	if err := s.check(); err != nil {
		return Epoch{}, err
	}
	return s.memStore.Epoch(ctx, service)
}

func (s *cutStore) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	if err := s.check(); err != nil {
		return Epoch{}, err
	}
	return s.memStore.ClaimEpoch(ctx, service, expect, epoch, holder)
}

func (s *cutStore) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	if err := s.check(); err != nil {
		return Epoch{}, err
	}
	return s.memStore.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, silent)
}

func (s *cutStore) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	if err := s.check(); err != nil {
		return Epoch{}, err
	}
	return s.memStore.Renew(ctx, service, epoch, holder)
}

func (s *cutStore) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	if err := s.check(); err != nil {
		return SaveResult{}, err
	}
	return s.memStore.Save(ctx, req)
}

func (s *cutStore) Transcript(ctx context.Context, chatID string) (*Transcript, error) {
	s.mu.Lock()
	held := s.held
	if held != nil {
		s.waiting++
	}
	s.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return nil, fmt.Errorf("held read: %w", ErrUnavailable)
		}
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.memStore.Transcript(ctx, chatID)
}

func (s *cutStore) downEpochReads() int { s.mu.Lock(); defer s.mu.Unlock(); return s.epochs }
func (s *cutStore) heldReads() int      { s.mu.Lock(); defer s.mu.Unlock(); return s.waiting }

// fakeWitness answers whether the primary is reachable, or fails as an
// unreachable witness would.
type fakeWitness struct {
	mu    sync.Mutex
	reach bool
	err   error
	asked int
}

func (w *fakeWitness) set(reach bool, err error) {
	w.mu.Lock()
	w.reach, w.err = reach, err
	w.mu.Unlock()
}

func (w *fakeWitness) ask(ctx context.Context, witness, target string) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.asked++
	return w.reach, w.err
}

func (w *fakeWitness) count() int { w.mu.Lock(); defer w.mu.Unlock(); return w.asked }

// setStates sets the state of every member but self in mm's view, and
// tells subscribers that primary failed (dead) or joined (alive).
func (m *memMembers) setStates(self, primary string, state membership.State) {
	m.mu.Lock()
	var ev membership.Event
	for i := range m.members {
		if m.members[i].Name == self {
			continue
		}
		m.members[i].State = state
		if m.members[i].Name == primary {
			ev = membership.Event{Type: membership.EventJoined, Member: m.members[i]}
			if state != membership.StateAlive {
				ev.Type = membership.EventFailed
			}
		}
	}
	subs := slices.Clone(m.subs)
	m.mu.Unlock()
	for _, s := range subs {
		s <- ev
	}
}

// isolationRig is a healthy pair whose backup (core-b) reaches the primary
// through a cuttable link, sees UCS (and, with etcd, the coordination
// cluster) through its own cutStore, asks a fake witness and sees a
// membership view the test sets (the primary, a witness and a control
// plane). fencing is "ucs" (epochs at UCS) or "etcd" (a real embedded etcd
// holds them).
type isolationRig struct {
	mem    *memStore
	bUCS   *cutStore
	fencer Fencer // the authority as the primary sees it
	link   *tcpProxy
	w      *fakeWitness
	mm     *memMembers
	a, b   *node
	cust   *chatpb.Auth
	agent  *chatpb.Auth
	epoch  uint64 // the primary's epoch
}

// fencings are the fencing authorities the isolation tests run against.
var fencings = []string{"ucs", "etcd"}

func newIsolationRig(t *testing.T, fencing string) *isolationRig {
	r := &isolationRig{mem: newMemStore(), w: &fakeWitness{reach: true}}
	r.bUCS = &cutStore{memStore: r.mem}
	var aOpts, bOpts []Option
	r.fencer = StoreFencer{Store: r.mem}
	if fencing == "etcd" {
		cli := startEtcd(t)
		r.fencer = NewEtcdFencer(cli, "/hachat/fencing/", time.Second)
		aOpts = append(aOpts, WithFencer(r.fencer))
		bOpts = append(bOpts, WithFencer(cutFencer{Fencer: NewEtcdFencer(cli, "/hachat/fencing/", time.Second), cut: r.bUCS}))
	}
	la, lb := listen(t), listen(t)
	r.a = startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, r.mem, nil, aOpts...)
	waitFor(t, "a primary", func() bool { return r.a.c.role.IsPrimary() })
	r.epoch = r.a.c.role.Epoch()
	r.link = newProxy(t, la.Addr().String())
	r.mm = &memMembers{members: []membership.Member{
		{Name: "core-a", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindCore, Role: RolePrimary, Epoch: r.epoch, GRPCAddr: r.link.addr}},
		{Name: "core-b", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindCore, Role: RoleBackup, GRPCAddr: lb.Addr().String()}},
		{Name: "witness", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindWitness, HTTPAddr: "127.0.0.1:1"}},
		{Name: "xds", State: membership.StateAlive, Meta: membership.Meta{Kind: membership.KindXDS, HTTPAddr: "127.0.0.1:2"}},
	}}
	r.b = startNode(t, "core-b", RoleBackup, r.link.addr, lb, r.bUCS,
		func(c *Config) { c.Witness = "127.0.0.1:1" }, append(bOpts, WithWitness(r.w.ask), WithMembership(r.mm))...)
	waitInSync(t, r.a, "core-b")
	r.cust, r.agent = r.a.chat(t)
	return r
}

// sendOnA sends n messages through the primary and returns their indexes.
func (r *isolationRig) sendOnA(t *testing.T, n int, tag string) []uint64 {
	t.Helper()
	var out []uint64
	for i := range n {
		resp, err := r.a.cl.Send(ctxT(t), msg(r.cust, fmt.Sprintf("%s %d", tag, i), fmt.Sprintf("%s-%d", tag, i)))
		if err != nil {
			t.Fatalf("send %s %d on the healthy primary: %v", tag, i, err)
		}
		out = append(out, resp.Index)
	}
	return out
}

// assertPrimaryKept checks that core-a is primary at its first epoch and
// that the fencing authority holds no newer epoch: nobody deposed it.
func (r *isolationRig) assertPrimaryKept(t *testing.T) {
	t.Helper()
	e, err := r.fencer.Current(ctxT(t), "hachat")
	if err != nil {
		t.Fatal(err)
	}
	if e.Epoch != r.epoch || r.a.c.role.Epoch() != r.epoch || e.Holder != "core-a" || !r.a.c.role.IsPrimary() || r.b.c.role.IsPrimary() {
		t.Fatalf("the healthy primary was deposed: epoch %d held by %q; a primary=%v, b primary=%v",
			e.Epoch, e.Holder, r.a.c.role.IsPrimary(), r.b.c.role.IsPrimary())
	}
}

// TestCutOffBackupDoesNotDeposePrimary isolates the backup from everyone
// (its link to the primary refuses, UCS and the witness are unreachable,
// gossip shows every other member failed) while the primary keeps serving,
// then heals everything at once, as `docker network connect` does. The
// backup must decide again and again that it is the one cut off, and
// rejoin as backup; the primary keeps its epoch, and nothing it
// acknowledged is lost.
func TestCutOffBackupDoesNotDeposePrimary(t *testing.T) {
	for _, fencing := range fencings {
		t.Run(fencing, func(t *testing.T) {
			r := newIsolationRig(t, fencing)
			before := r.sendOnA(t, 3, "before")

			r.bUCS.setDown(true)
			r.w.set(false, errors.New("witness unreachable"))
			r.link.cut() // refused, as an iptables REJECT would
			r.mm.setStates("core-b", "core-a", membership.StateDead)
			waitFor(t, "a lost its backup", func() bool { return r.a.c.repl.Current() == nil })
			during := r.sendOnA(t, 5, "during") // second copies go to UCS

			asked := r.w.count()
			waitFor(t, "b re-examined the primary three times while cut off", func() bool { return r.w.count() >= asked+3 || r.b.c.role.IsPrimary() })
			if r.b.c.role.IsPrimary() {
				t.Fatal("a backup cut off from everyone promoted")
			}
			// UCS answers first (the heal reaches it first, or the primary and the
			// control plane died together): b is no longer cut off and decides the
			// primary is gone, but only on a refused connection the witness does not
			// confirm, so its claim respects the primary's lease, which the healthy
			// primary keeps renewing: b must not take the epoch.
			r.bUCS.setDown(false)
			asked = r.w.count()
			waitFor(t, "b re-examined the primary three times with UCS back", func() bool { return r.w.count() >= asked+3 || r.b.c.role.IsPrimary() })
			if r.b.c.role.IsPrimary() {
				t.Fatal("a backup that reaches only UCS deposed the primary")
			}

			r.w.set(true, nil)
			r.link.heal()
			r.mm.setStates("core-b", "core-a", membership.StateAlive)
			waitInSync(t, r.a, "core-b")
			r.assertPrimaryKept(t)
			after := r.sendOnA(t, 2, "after")
			waitFor(t, "b holds every acknowledged message", func() bool { return sameLog(r.a.log(r.cust.SessionId), r.b.log(r.cust.SessionId)) })
			for _, idx := range slices.Concat(before, during, after) {
				if !slices.ContainsFunc(r.b.log(r.cust.SessionId), func(e *chatpb.Event) bool { return e.Index == idx }) {
					t.Errorf("acknowledged index %d missing on the backup", idx)
				}
			}
		})
	}
}

// TestStaleDecisionDropped lets the backup decide the primary is dead (the
// witness wrongly says it cannot reach it, while UCS is unreachable so the
// claim waits), then heals the link, the witness and UCS together. The
// re-check immediately before the claim must find the primary alive and
// drop the decision.
func TestStaleDecisionDropped(t *testing.T) {
	for _, fencing := range fencings {
		t.Run(fencing, func(t *testing.T) {
			r := newIsolationRig(t, fencing)
			r.bUCS.setDown(true)
			r.w.set(false, nil) // "cannot reach": the evidence of a dead primary
			r.link.cut()
			waitFor(t, "b decided to promote and waits for UCS", func() bool { return r.bUCS.downEpochReads() >= 2 })
			if r.b.c.role.IsPrimary() {
				t.Fatal("b promoted without UCS")
			}

			r.w.set(true, nil)
			r.link.heal()
			r.bUCS.setDown(false)
			waitFor(t, "b dropped its stale decision", func() bool { return counterValue(r.b.c.m.promotionsDropped) >= 1 })
			waitInSync(t, r.a, "core-b")
			r.assertPrimaryKept(t)
			r.sendOnA(t, 1, "after")
		})
	}
}

// TestNoServingBeforeMerge cuts only the link (the primary keeps serving
// with second copies in UCS, the backup's replica goes stale), then kills
// the primary. The backup promotes, but while its reads of UCS are held it
// answers no Chat call and reports NOT_SERVING; once merged it holds every
// message the old primary acknowledged, at its index, and new messages get
// the indexes after them.
func TestNoServingBeforeMerge(t *testing.T) {
	for _, fencing := range fencings {
		t.Run(fencing, func(t *testing.T) {
			r := newIsolationRig(t, fencing)
			r.link.cut() // the witness still reaches the primary: no failover
			waitFor(t, "a lost its backup", func() bool { return r.a.c.repl.Current() == nil })
			waitFor(t, "b knows its replica is stale", func() bool { return r.b.c.replicaStale.Load() })
			acked := r.sendOnA(t, 3, "second-copy")

			release := make(chan struct{})
			r.bUCS.mu.Lock()
			r.bUCS.held = release
			r.bUCS.mu.Unlock()
			r.a.kill()
			r.w.set(false, nil)
			waitFor(t, "b promoted, merging", func() bool { return r.b.c.role.IsPrimary() && r.bUCS.heldReads() > 0 })

			if _, err := r.b.cl.Send(ctxT(t), msg(r.cust, "too early", "early")); status.Code(err) != codes.Unavailable {
				t.Fatalf("send to a primary that has not merged UCS: %v, want UNAVAILABLE", err)
			}
			conn, err := grpc.NewClient(r.b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hc := healthpb.NewHealthClient(conn)
			h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: ChatServiceName})
			if err != nil || h.Status != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("health while merging: %v %v, want NOT_SERVING", h, err)
			}
			if st, err := r.b.cl.Status(ctxT(t), &chatpb.StatusRequest{}); err != nil || !st.Draining {
				t.Fatalf("status while merging: %v %v, want draining", st, err)
			}

			close(release)
			waitFor(t, "b serving", func() bool {
				h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: ChatServiceName})
				return err == nil && h.Status == healthpb.HealthCheckResponse_SERVING
			})
			log := r.b.log(r.cust.SessionId)
			for i, idx := range acked {
				want := fmt.Sprintf("second-copy %d", i)
				if int(idx) > len(log) || log[idx-1].Text != want {
					t.Fatalf("index %d on the new primary is not the acknowledged %q", idx, want)
				}
			}
			resp, err := r.b.cl.Send(ctxT(t), msg(r.cust, "after", "after"))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Index <= acked[len(acked)-1] {
				t.Fatalf("new message got index %d, not after the acknowledged %d", resp.Index, acked[len(acked)-1])
			}
		})
	}
}

// counterValue reads a counter's current value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
