package chatcore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hachat/hachat/coord/coordtest"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// startEtcd runs a real one-member etcd in process (coordtest) and returns
// a client of it; both stop when the test ends.
func startEtcd(t testing.TB) *clientv3.Client {
	t.Helper()
	return coordtest.Client(t, coordtest.Start(t))
}

// TestEtcdFencer holds the Fencer contract against a real etcd: claims are
// compare-and-sets whose epochs grow, a claim without certain evidence
// waits for the holder's lease to lapse, a certain one does not, and a
// deposed holder's renewal is refused as stale.
func TestEtcdFencer(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	a := NewEtcdFencer(cli, "/test/", time.Second)
	b := NewEtcdFencer(cli, "/test/", time.Second)
	const svc = "hachat"

	if cur, err := a.Current(ctx, svc); err != nil || cur.Epoch != 0 {
		t.Fatalf("current of a new service: %+v %v, want epoch 0", cur, err)
	}
	e1, err := a.Claim(ctx, svc, 0, "core-a", time.Second)
	if err != nil || e1.Epoch == 0 || e1.Holder != "core-a" {
		t.Fatalf("first claim: %+v %v", e1, err)
	}
	steps := []struct {
		name string
		do   func() (Epoch, error)
		want error // nil: success
	}{
		{"claim with an old expect", func() (Epoch, error) { return b.Claim(ctx, svc, 0, "core-b", 0) }, ErrEpochConflict},
		{"uncertain claim while a's lease lives", func() (Epoch, error) { return b.Claim(ctx, svc, e1.Epoch, "core-b", time.Second) }, ErrHolderAlive},
		{"a renews", func() (Epoch, error) { return a.Renew(ctx, svc, e1.Epoch, "core-a") }, nil},
		{"b cannot renew a's epoch", func() (Epoch, error) { return b.Renew(ctx, svc, e1.Epoch, "core-b") }, ErrEpochConflict},
	}
	for _, s := range steps {
		_, err := s.do()
		if s.want == nil && err != nil || s.want != nil && !errors.Is(err, s.want) {
			t.Fatalf("%s: %v, want %v", s.name, err, s.want)
		}
	}
	// a stops renewing: its lease lapses within its TTL (plus etcd's
	// expiry sweep), and then an uncertain claim succeeds.
	var e2 Epoch
	waitFor(t, "b's uncertain claim after a's lease lapsed", func() bool {
		var err error
		e2, err = b.Claim(ctx, svc, e1.Epoch, "core-b", time.Second)
		return err == nil
	})
	if e2.Epoch <= e1.Epoch {
		t.Fatalf("epoch did not grow: %d after %d", e2.Epoch, e1.Epoch)
	}
	if _, err := a.Renew(ctx, svc, e1.Epoch, "core-a"); !errors.Is(err, ErrStaleEpoch) || storeEpoch(err) != e2.Epoch {
		t.Fatalf("deposed holder renews: %v, want stale at %d", err, e2.Epoch)
	}
	// Certain evidence: a takes the epoch back at once while b's lease lives.
	start := time.Now()
	e3, err := a.Claim(ctx, svc, e2.Epoch, "core-a", 0)
	if err != nil || e3.Epoch <= e2.Epoch {
		t.Fatalf("certain claim: %+v %v", e3, err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("certain claim waited %v (for b's lease?)", took)
	}
	if _, err := b.Renew(ctx, svc, e2.Epoch, "core-b"); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("b renews after a's certain claim: %v, want stale", err)
	}
	if cur, err := b.Current(ctx, svc); err != nil || cur.Epoch != e3.Epoch || cur.Holder != "core-a" {
		t.Fatalf("current: %+v %v, want %d core-a", cur, err, e3.Epoch)
	}
}

// cutFencer is a core's view of the fencing authority that a test cuts
// together with its view of UCS (the cutStore): a backup cut off from
// everyone reaches neither.
type cutFencer struct {
	Fencer
	cut *cutStore
}

// check fails while the cut reaches the coordination cluster too.
func (f cutFencer) check() error {
	f.cut.mu.Lock()
	ucsOnly := f.cut.ucsOnly
	if f.cut.down && !ucsOnly {
		f.cut.epochs++
	}
	f.cut.mu.Unlock()
	if ucsOnly {
		return nil
	}
	return f.cut.check()
}

func (f cutFencer) Current(ctx context.Context, service string) (Epoch, error) {
	if err := f.check(); err != nil {
		return Epoch{}, err
	}
	return f.Fencer.Current(ctx, service)
}

func (f cutFencer) Claim(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (Epoch, error) {
	if err := f.check(); err != nil {
		return Epoch{}, err
	}
	return f.Fencer.Claim(ctx, service, expect, holder, ifSilent)
}

func (f cutFencer) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	if err := f.check(); err != nil {
		return Epoch{}, err
	}
	return f.Fencer.Renew(ctx, service, epoch, holder)
}

// MarkSolo and Solo pass through: the rig's backup reads the solo mark.
func (f cutFencer) MarkSolo(ctx context.Context, service string, epoch uint64, holder string, solo bool) error {
	if err := f.check(); err != nil {
		return err
	}
	return f.Fencer.(SoloRecorder).MarkSolo(ctx, service, epoch, holder, solo)
}

func (f cutFencer) Solo(ctx context.Context, service string, epoch uint64) (bool, error) {
	if err := f.check(); err != nil {
		return false, err
	}
	return f.Fencer.(SoloRecorder).Solo(ctx, service, epoch)
}

// ClaimSolo passes through too: a promotion claims with the solo mark and
// reads the old primary's in the same transaction.
func (f cutFencer) ClaimSolo(ctx context.Context, service string, expect uint64, holder string, ifSilent time.Duration) (SoloClaim, error) {
	if err := f.check(); err != nil {
		return SoloClaim{}, err
	}
	return f.Fencer.(SoloClaimer).ClaimSolo(ctx, service, expect, holder, ifSilent)
}

// TestSoloMarkDecidesTheMerge: the link breaks while the primary lives (the
// backup's replica is stale), UCS goes down for the backup, then the
// primary is killed. The backup promotes with etcd either way; whether it
// may serve before UCS returns depends on the solo mark: when the old
// primary acknowledged nothing without its backup (no mark) the replica is
// complete and it serves at once; when it did (mark recorded before the
// first such acknowledgement) it waits for UCS and merges first. The
// promotion's claim replaces the old primary's mark with its own and
// reads the old one in the same transaction: that reading decides.
func TestSoloMarkDecidesTheMerge(t *testing.T) {
	for _, tt := range []struct {
		name    string
		soloAck bool // the primary acknowledges while the link is cut
	}{
		{"never solo: serves at once", false},
		{"solo: merges first", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newIsolationRig(t, "etcd")
			r.link.cut() // the witness still reaches the primary: no failover
			waitFor(t, "a lost its backup", func() bool { return r.a.c.repl.Current() == nil })
			waitFor(t, "b knows its replica is stale", func() bool { return r.b.c.replicaStale.Load() })
			var acked []uint64
			if tt.soloAck {
				acked = r.sendOnA(t, 2, "second-copy")
				if v := gaugeValue(r.a.c.m.solo); v != 1 {
					t.Fatalf("hachat_core_solo %v on the primary acknowledging without its backup, want 1", v)
				}
			} else if v := gaugeValue(r.a.c.m.solo); v != 0 {
				t.Fatalf("hachat_core_solo %v before any solo acknowledgement, want 0", v)
			}
			r.bUCS.mu.Lock()
			r.bUCS.down, r.bUCS.ucsOnly = true, true
			r.bUCS.mu.Unlock()
			r.a.kill()
			r.w.set(false, nil)
			waitFor(t, "b primary", func() bool { return r.b.c.role.IsPrimary() })
			conn, err := grpc.NewClient(r.b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hc := healthpb.NewHealthClient(conn)
			serving := func() bool {
				h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: ChatServiceName})
				return err == nil && h.Status == healthpb.HealthCheckResponse_SERVING
			}
			if !tt.soloAck {
				waitFor(t, "b serving with UCS down", serving)
				return
			}
			time.Sleep(300 * time.Millisecond) // it must keep waiting for UCS
			if serving() {
				t.Fatal("b serves before merging what the old primary acknowledged with second copies in UCS")
			}
			r.bUCS.setDown(false)
			waitFor(t, "b serving after the merge", serving)
			log := r.b.log(r.cust.SessionId)
			for i, idx := range acked {
				if want := fmt.Sprintf("second-copy %d", i); int(idx) > len(log) || log[idx-1].Text != want {
					t.Fatalf("index %d on the new primary is not the acknowledged %q", idx, want)
				}
			}
		})
	}
}

// TestUCSDownFailoverWithEtcd is the failure-matrix row "UCS down, then the
// primary killed" with etcd as the fencing authority: the backup promotes
// although UCS does not answer (fencing no longer lives there) and keeps
// every acknowledged message. Alone and without UCS no second copy exists,
// so a new message is refused as retryable (invariant 1) until the killed
// core comes back as its backup; then chats go on with UCS still down. Once
// UCS returns the transcript is saved under the new epoch, which UCS then
// holds: a save stamped with the old primary's epoch is refused as stale.
func TestUCSDownFailoverWithEtcd(t *testing.T) {
	cli := startEtcd(t)
	store := &cutStore{memStore: newMemStore()}
	fencer := func() Option { return WithFencer(NewEtcdFencer(cli, "/hachat/fencing/", time.Second)) }
	mod := func(c *Config) { c.TranscriptAutoSave = 1 }
	la, lb := listen(t), listen(t)
	aAddr := la.Addr().String()
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, mod, fencer())
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	b := startNode(t, "core-b", RoleBackup, aAddr, lb, store, mod, fencer())
	waitInSync(t, a, "core-b")
	old := a.c.role.Epoch()
	cust, _ := a.chat(t)
	r, err := a.cl.Send(ctxT(t), msg(cust, "acked before the fault", "c1"))
	if err != nil {
		t.Fatal(err)
	}

	store.setDown(true)
	a.kill()
	waitFor(t, "b promoted while UCS is down", func() bool { return b.c.role.IsPrimary() })
	if e := b.c.role.Epoch(); e <= old {
		t.Fatalf("new epoch %d is not newer than %d", e, old)
	}
	d, err := b.cl.Send(ctxT(t), msg(cust, "acked before the fault", "c1"))
	if err != nil || !d.Duplicate || d.Index != r.Index {
		t.Fatalf("acknowledged message lost: %v %v", d, err)
	}
	if _, err := b.cl.Send(ctxT(t), msg(cust, "no second copy", "c2")); status.Code(err) != codes.Unavailable {
		t.Fatalf("send with neither backup nor UCS: %v, want UNAVAILABLE", err)
	}

	la2 := relisten(t, aAddr)
	startNode(t, "core-a", RolePrimary, b.addr, la2, store, mod, fencer())
	waitInSync(t, b, "core-a")
	during, err := b.cl.Send(ctxT(t), msg(cust, "sent while UCS is down", "c3"))
	if err != nil {
		t.Fatalf("send with the old primary back as backup, UCS down: %v", err)
	}

	store.setDown(false)
	newEpoch := b.c.role.Epoch()
	waitFor(t, "the transcript saved under the new epoch", func() bool {
		tr, err := store.memStore.Transcript(ctxT(t), cust.SessionId)
		if err != nil {
			return false
		}
		last := tr.Events[len(tr.Events)-1]
		e, err := store.memStore.Epoch(ctxT(t), "hachat")
		return err == nil && e.Epoch == newEpoch && last.Index >= during.Index && last.Epoch == newEpoch
	})
	_, err = store.memStore.Save(ctxT(t), SaveRequest{ChatID: cust.SessionId, Service: "hachat", Epoch: old, Writer: "core-a"})
	if !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("a save at the old epoch after the failover: %v, want stale", err)
	}
}

// markCounter is an EtcdFencer that counts the solo marks recorded apart
// from a claim (MarkSolo with solo true).
type markCounter struct {
	*EtcdFencer
	mu    sync.Mutex
	marks int
}

func (f *markCounter) MarkSolo(ctx context.Context, service string, epoch uint64, holder string, solo bool) error {
	if solo {
		f.mu.Lock()
		f.marks++
		f.mu.Unlock()
	}
	return f.EtcdFencer.MarkSolo(ctx, service, epoch, holder, solo)
}

func (f *markCounter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.marks
}

// TestPromotionClaimsWithTheSoloMark: a backup that promotes after its
// primary was killed has no backup of its own, so its first
// acknowledgement takes the second copy in UCS and needs the solo mark.
// The promotion's claim records it (one etcd transaction): it names the
// new epoch before any call reaches the new primary, and the first
// acknowledgements write nothing more to etcd. Once the old primary is
// back as backup and in sync, the mark is cleared as before.
func TestPromotionClaimsWithTheSoloMark(t *testing.T) {
	cli := startEtcd(t)
	store := newMemStore()
	fb := &markCounter{EtcdFencer: NewEtcdFencer(cli, "/hachat/fencing/", time.Second)}
	la, lb := listen(t), listen(t)
	aAddr := la.Addr().String()
	a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil, WithFencer(NewEtcdFencer(cli, "/hachat/fencing/", time.Second)))
	waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
	b := startNode(t, "core-b", RoleBackup, aAddr, lb, store, nil, WithFencer(fb))
	waitInSync(t, a, "core-b")
	cust, _ := a.chat(t)
	if _, err := a.cl.Send(ctxT(t), msg(cust, "before the kill", "c1")); err != nil {
		t.Fatal(err)
	}

	a.kill()
	waitFor(t, "b primary", func() bool { return b.c.role.IsPrimary() })
	epoch := b.c.role.Epoch()
	if got := b.c.solo.epoch.Load(); got != epoch {
		t.Fatalf("solo mark known to the new primary: epoch %d, want %d (recorded with the claim)", got, epoch)
	}
	if solo, err := fb.Solo(ctxT(t), "hachat", epoch); err != nil || !solo {
		t.Fatalf("solo mark of epoch %d at etcd: %v %v, want recorded", epoch, solo, err)
	}
	if v := gaugeValue(b.c.m.solo); v != 1 {
		t.Fatalf("hachat_core_solo %v on the new primary, want 1", v)
	}
	for i := range 3 {
		if _, err := b.cl.Send(ctxT(t), msg(cust, fmt.Sprintf("after the kill %d", i), fmt.Sprintf("k%d", i))); err != nil {
			t.Fatalf("send %d on the new primary: %v", i, err)
		}
	}
	if n := fb.count(); n != 0 {
		t.Fatalf("%d solo marks written to etcd after the claim, want none", n)
	}

	la2 := relisten(t, aAddr)
	startNode(t, "core-a", RoleBackup, b.addr, la2, store, nil, WithFencer(NewEtcdFencer(cli, "/hachat/fencing/", time.Second)))
	waitInSync(t, b, "core-a")
	waitFor(t, "the solo mark cleared", func() bool {
		solo, err := fb.Solo(ctxT(t), "hachat", epoch)
		return err == nil && !solo && b.c.solo.epoch.Load() == 0
	})
}

// TestEtcdFencerUnreachable: with every member gone a call fails with an
// error that matches ErrUnavailable (the caller retries) and no fencing
// sentinel (it must not step down or give up a claim for it).
func TestEtcdFencerUnreachable(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + listen(t).Addr().String()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	f := NewEtcdFencer(cli, "/test/", time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = f.Claim(ctx, "hachat", 0, "core-a", 0)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrEpochConflict) || errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("claim with etcd unreachable: %v, want only ErrUnavailable", err)
	}
}

// gaugeValue reads a gauge's current value.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// TestEtcdFencerClaimSolo: a claim that asks for the solo mark writes it
// in its own transaction, naming the epoch it granted (Solo reads it as
// MarkSolo's), and reads the mark it replaces: whether the holder of the
// replaced epoch had gone solo.
func TestEtcdFencerClaimSolo(t *testing.T) {
	cli := startEtcd(t)
	ctx := ctxT(t)
	a := NewEtcdFencer(cli, "/test/", time.Second)
	b := NewEtcdFencer(cli, "/test/", time.Second)
	const svc = "hachat"
	e1, err := a.Claim(ctx, svc, 0, "core-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	solo := func(epoch uint64) bool {
		t.Helper()
		s, err := a.Solo(ctx, svc, epoch)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if solo(e1.Epoch) {
		t.Fatal("solo after a plain claim")
	}
	steps := []struct {
		name     string
		f        *EtcdFencer
		holder   string
		markPrev bool // the holder of the replaced epoch marks it first
		wasSolo  bool
	}{
		{"replacing a primary that never went solo", b, "core-b", false, false},
		{"replacing one marked at its claim", a, "core-a", false, true},
		{"replacing one that marked by itself", b, "core-b", true, true},
	}
	prev := e1
	for _, s := range steps {
		if s.markPrev {
			if err := a.MarkSolo(ctx, svc, prev.Epoch, prev.Holder, false); err != nil {
				t.Fatal(err)
			}
			if err := a.MarkSolo(ctx, svc, prev.Epoch, prev.Holder, true); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.f.ClaimSolo(ctx, svc, prev.Epoch, s.holder, 0)
		if err != nil || got.Epoch.Epoch <= prev.Epoch || got.Epoch.Holder != s.holder {
			t.Fatalf("%s: %+v %v", s.name, got, err)
		}
		if got.WasSolo != s.wasSolo {
			t.Fatalf("%s: was solo %v, want %v", s.name, got.WasSolo, s.wasSolo)
		}
		if !solo(got.Epoch.Epoch) || solo(prev.Epoch) {
			t.Fatalf("%s: the mark does not name the new epoch %d alone", s.name, got.Epoch.Epoch)
		}
		prev = got.Epoch
	}
	// A lost claim writes nothing.
	if _, err := a.ClaimSolo(ctx, svc, e1.Epoch, "core-a", 0); !errors.Is(err, ErrEpochConflict) {
		t.Fatalf("claim on an old epoch: %v, want conflict", err)
	}
	if !solo(prev.Epoch) {
		t.Fatalf("the mark of %d is gone after a lost claim", prev.Epoch)
	}
	// The holder clears it as one it recorded itself.
	if err := b.MarkSolo(ctx, svc, prev.Epoch, prev.Holder, false); err != nil {
		t.Fatal(err)
	}
	if solo(prev.Epoch) {
		t.Fatal("solo after the clear")
	}
}
