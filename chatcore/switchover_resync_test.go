package chatcore

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// snapshotGate holds a backup's acknowledgement of its snapshot (the
// core's beforeSnapshotAck) once armed: held is signalled when a
// snapshot_done waits, and the value sent on release is the hook's answer
// (nil: acknowledge it; an error: end the stream unsynced).
type snapshotGate struct {
	armed   chan struct{} // closed to arm
	held    chan struct{}
	release chan error
	stop    chan struct{} // closed when the test ends: a held ack ends its stream
}

func newSnapshotGate() *snapshotGate {
	return &snapshotGate{armed: make(chan struct{}), held: make(chan struct{}, 1), release: make(chan error, 1), stop: make(chan struct{})}
}

// option installs the gate on a core.
func (g *snapshotGate) option() Option {
	return func(c *Core) {
		c.beforeSnapshotAck = func() error {
			select {
			case <-g.armed:
			default:
				return nil
			}
			g.held <- struct{}{}
			select {
			case err := <-g.release:
				return err
			case <-g.stop:
				return errors.New("test over")
			}
		}
	}
}

// switchoverHeld switches a over to b and waits until a, now b's backup,
// received b's whole snapshot and holds its acknowledgement: b's link to a
// is not in sync.
func switchoverHeld(t *testing.T, a, b *node, g *snapshotGate) {
	t.Helper()
	t.Cleanup(func() { close(g.stop) }) // before the nodes stop (cleanups run last first)
	close(g.armed)
	if _, err := a.cl.Switchover(ctxT(t), &chatpb.SwitchoverRequest{AdminToken: "adm-token"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the old primary never received the new primary's snapshot")
	}
	if l := b.c.repl.Current(); l == nil || l.InSync() {
		t.Fatal("the new primary's link to the old one is missing or in sync while its snapshot ack is held")
	}
}

// TestSwitchoverAckBeforeResync: after a switchover the old primary
// becomes the new one's backup and resyncs from a full snapshot. A send on
// the new primary meanwhile does not wait behind the snapshot for the
// backup's ack: its second copy goes to UCS, and the backup link stays up
// (before, the send waited for the ack until replication-timeout killed
// the link). With UCS failing, the send waits for the backup's ack as
// before.
func TestSwitchoverAckBeforeResync(t *testing.T) {
	for _, tt := range []struct {
		name   string
		ucsErr error
	}{
		{"UCS up: the second copy in UCS", nil},
		{"UCS failing: the backup's ack once it resyncs", fmt.Errorf("down: %w", ErrUnavailable)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := newMemStore()
			g := newSnapshotGate()
			la, lb := listen(t), listen(t)
			slow := func(c *Config) { c.ReplicationTimeout = 2 * time.Second } // the ack would come far later than UCS
			a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, slow, g.option())
			waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
			b := startNode(t, "core-b", RoleBackup, la.Addr().String(), lb, store, slow)
			waitInSync(t, a, "core-b")
			ctx := ctxT(t)
			cust, _ := a.chat(t)
			if _, err := a.cl.Send(ctx, msg(cust, "before", "c1")); err != nil {
				t.Fatal(err)
			}
			switchoverHeld(t, a, b, g)
			link := b.c.repl.Current()
			store.set(func(m *memStore) { m.saveErr = tt.ucsErr })

			type result struct {
				r   *chatpb.SendResponse
				err error
			}
			sent := make(chan result, 1)
			go func() {
				r, err := b.cl.Send(ctx, msg(cust, "after", "c2"))
				sent <- result{r, err}
			}()
			var got result
			if tt.ucsErr == nil {
				select {
				case got = <-sent:
				case <-time.After(time.Second): // far below the 2s replication-timeout
					t.Fatal("the send waits behind the backup's snapshot")
				}
				if got.err != nil {
					t.Fatal(got.err)
				}
				if b.c.repl.Current() != link || link.InSync() {
					t.Fatal("acknowledged only after the resyncing backup's link was given up")
				}
				if !slices.Contains(store.indexes(cust.SessionId), got.r.Index) {
					t.Fatal("acknowledged before the backup's ack without a second copy in UCS")
				}
				g.release <- nil
			} else {
				saves := func() int { store.mu.Lock(); defer store.mu.Unlock(); return store.saves }
				before := saves()
				waitFor(t, "the second copy tried in UCS", func() bool { return saves() > before })
				select {
				case got = <-sent:
					t.Fatalf("answered before the backup's ack with UCS failing: %v %v", got.r, got.err)
				default:
				}
				g.release <- nil
				got = <-sent
				if got.err != nil {
					t.Fatalf("send with UCS failing and the backup resynced: %v", got.err)
				}
			}
			waitInSync(t, b, "core-a")
			waitFor(t, "a holds the acknowledged send", func() bool {
				l := a.log(cust.SessionId)
				return len(l) >= int(got.r.Index) && l[got.r.Index-1].Text == "after"
			})
		})
	}
}

// TestSwitchoverResyncWindowFailover: with etcd, the switchover's claim
// records the solo mark in its own transaction, so a send acknowledged
// with its second copy in UCS before the backup resynced writes no mark
// of its own; when the new primary is then killed before its backup
// acknowledged the snapshot, the backup promotes, finds the mark and
// merges from UCS: the acknowledged send is not lost. A backup in sync
// clears the mark.
func TestSwitchoverResyncWindowFailover(t *testing.T) {
	for _, tt := range []struct {
		name string
		kill bool // kill the new primary inside the resync window
	}{
		{"resynced: the mark cleared", false},
		{"killed in the resync window: merged from UCS", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cli := startEtcd(t)
			store := newMemStore()
			g := newSnapshotGate()
			fb := &markCounter{EtcdFencer: NewEtcdFencer(cli, "/hachat/fencing/", time.Second)}
			la, lb := listen(t), listen(t)
			a := startNode(t, "core-a", RolePrimary, lb.Addr().String(), la, store, nil, g.option(),
				WithFencer(NewEtcdFencer(cli, "/hachat/fencing/", time.Second)))
			waitFor(t, "a primary", func() bool { return a.c.role.IsPrimary() })
			b := startNode(t, "core-b", RoleBackup, la.Addr().String(), lb, store, nil, WithFencer(fb))
			waitInSync(t, a, "core-b")
			cust, _ := a.chat(t)
			if _, err := a.cl.Send(ctxT(t), msg(cust, "before", "c1")); err != nil {
				t.Fatal(err)
			}
			switchoverHeld(t, a, b, g)
			epoch := b.c.role.Epoch()
			if got := b.c.solo.epoch.Load(); got != epoch {
				t.Fatalf("solo mark known to the new primary: epoch %d, want %d (recorded with the claim)", got, epoch)
			}
			r, err := b.cl.Send(ctxT(t), msg(cust, "after", "c2"))
			if err != nil {
				t.Fatal(err)
			}
			if n := fb.count(); n != 0 {
				t.Fatalf("%d solo marks written to etcd after the claim, want none", n)
			}
			if !slices.Contains(store.indexes(cust.SessionId), r.Index) {
				t.Fatal("acknowledged without a second copy in UCS")
			}
			if !tt.kill {
				g.release <- nil
				waitInSync(t, b, "core-a")
				waitFor(t, "the solo mark cleared", func() bool {
					solo, err := fb.Solo(ctxT(t), "hachat", epoch)
					return err == nil && !solo && b.c.solo.epoch.Load() == 0
				})
				return
			}
			b.kill()
			g.release <- errors.New("test: the new primary died during the resync")
			waitFor(t, "a primary again", func() bool { return a.c.role.IsPrimary() && !a.c.role.Unmerged() })
			l := a.log(cust.SessionId)
			if len(l) < int(r.Index) || l[r.Index-1].Text != "after" {
				t.Fatalf("the send acknowledged during the resync is not at index %d on the promoted core", r.Index)
			}
			if _, err := a.cl.Send(ctxT(t), msg(cust, "later", "c3")); err != nil {
				t.Fatal(err)
			}
		})
	}
}
