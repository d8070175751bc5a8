package ucsmock

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pgcluster"
	"github.com/hachat/hachat/telemetry"
)

// The tests share one throwaway PostgreSQL cluster (pgcluster), started on
// first use and stopped by TestMain; each test gets a database of its own.
var testPG struct {
	once    sync.Once
	cluster *pgcluster.Cluster
	err     error
	dbs     atomic.Uint64
}

func init() {
	testStores["pg"] = func(t *testing.T) faultStore {
		_, c := newPGServer(t, newPGDatabase(t))
		return c
	}
}

// newPGDatabase returns the DSN of a new, empty database on the shared
// cluster.
func newPGDatabase(t testing.TB) string {
	t.Helper()
	testPG.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		testPG.cluster, testPG.err = pgcluster.Start(ctx, pgcluster.Options{})
	})
	if testPG.err != nil {
		t.Fatalf("start postgresql (make deps installs it): %v", testPG.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := testPG.cluster.CreateDatabase(ctx, fmt.Sprintf("ucs_test_%d", testPG.dbs.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// stopTestPG stops the shared cluster, if it was started.
func stopTestPG() {
	if testPG.cluster != nil {
		testPG.cluster.Stop()
	}
}

// newPGServer starts a ucs instance on the PostgreSQL database dsn behind
// httptest and returns it with a client.
func newPGServer(t testing.TB, dsn string) (*Server, *Client) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Store = StorePostgres
	cfg.Postgres = dsn
	cfg.AdminToken = testToken
	cfg.MaxBody = 64 << 10
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	return srv, NewClient(hs.URL, hs.Client(), telemetry.Discard())
}

// TestPGInstancesFence: two ucs instances share one database. While
// writers save with epoch 1 through both, a claim of epoch 2 goes through
// one of them: no save with epoch 1 that started after the claim was
// acknowledged is accepted by either instance, and every acknowledged save
// is stored.
func TestPGInstancesFence(t *testing.T) {
	dsn := newPGDatabase(t)
	_, a := newPGServer(t, dsn)
	_, b := newPGServer(t, dsn)
	ctx := context.Background()
	if _, err := a.ClaimEpoch(ctx, "chat", 0, 1, "core-a"); err != nil {
		t.Fatal(err)
	}
	var claimed atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[string]uint64{} // chat -> highest acknowledged index
	var lateAcks atomic.Int64
	stop := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst := []*Client{a, b}[w%2]
			chat := fmt.Sprintf("chat-%d", w)
			for i := uint64(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				after := claimed.Load()
				_, err := inst.Save(ctx, SaveRequest{ChatID: chat, Service: "chat", Epoch: 1, Writer: "core-a", Events: evs(chat, i, i)})
				switch {
				case err == nil:
					if after {
						lateAcks.Add(1)
					}
					mu.Lock()
					acked[chat] = i
					mu.Unlock()
				case errors.Is(err, ErrStaleEpoch):
					return
				default:
					t.Errorf("save %s %d: %v", chat, i, err)
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the writers run
	if _, err := b.ClaimEpoch(ctx, "chat", 1, 2, "core-b"); err != nil {
		t.Fatal(err)
	}
	claimed.Store(true)
	deadline := time.AfterFunc(10*time.Second, func() { close(stop) })
	wg.Wait()
	deadline.Stop()
	if n := lateAcks.Load(); n > 0 {
		t.Fatalf("%d saves with epoch 1 acknowledged after epoch 2 was claimed", n)
	}
	if len(acked) == 0 {
		t.Fatal("no save acknowledged before the claim: the test proved nothing")
	}
	for chat, high := range acked {
		for _, c := range []*Client{a, b} {
			tr, err := c.Transcript(ctx, chat)
			if err != nil || uint64(len(tr.Events)) != high {
				t.Fatalf("%s: %d events stored, %d acknowledged (%v)", chat, len(tr.Events), high, err)
			}
		}
	}
}

// TestPGInstancesConflict: two instances race to store different events at
// the same index of one chat with the same epoch: exactly one wins, the
// other gets ErrConflict, and the stored event is the winner's.
func TestPGInstancesConflict(t *testing.T) {
	dsn := newPGDatabase(t)
	_, a := newPGServer(t, dsn)
	_, b := newPGServer(t, dsn)
	ctx := context.Background()
	for round := range 20 {
		chat := fmt.Sprintf("race-%d", round)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, c := range []*Client{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = c.Save(ctx, SaveRequest{ChatID: chat, Service: "chat", Epoch: 1, Writer: fmt.Sprint(i), Events: []*chatpb.Event{ev(chat, 1, fmt.Sprintf("from %d", i))}})
			}()
		}
		wg.Wait()
		won := 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
				tr, terr := a.Transcript(ctx, chat)
				if terr != nil || len(tr.Events) != 1 || tr.Events[0].GetText() != fmt.Sprintf("from %d", i) {
					t.Fatalf("%s: stored %v (%v), winner %d", chat, tr, terr, i)
				}
			case !errors.Is(err, ErrConflict):
				t.Fatalf("%s: loser got %v, want ErrConflict", chat, err)
			}
		}
		if won != 1 {
			t.Fatalf("%s: %d saves won, want 1 (%v)", chat, won, errs)
		}
	}
}

// TestPGBadConfig: a postgres store without a DSN, or with one that does
// not connect, is refused at New with a clear error.
func TestPGBadConfig(t *testing.T) {
	for _, tc := range []struct{ name, store, dsn string }{
		{"no dsn", StorePostgres, ""},
		{"unknown store", "mongo", ""},
		{"unreachable", StorePostgres, "host=/nonexistent-hachat port=1 user=x dbname=x connect_timeout=2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Store, cfg.Postgres = tc.store, tc.dsn
			if _, err := New(cfg, telemetry.Discard()); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}

// TestRedactDSN: passwords never reach the log.
func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://ucs:s3cret@db:5432/ucs":         "postgres://ucs:xxxxx@db:5432/ucs",
		"host=db user=ucs password=s3cret dbname=u": "host=db user=ucs password=xxxxx dbname=u",
		"host=/tmp/s dbname=u":                      "host=/tmp/s dbname=u",
	} {
		if got := redactDSN(in); got != want {
			t.Errorf("redactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}

// waitBlocked waits until another session waits for a lock (pg_locks) or
// done is closed, whichever comes first, and reports which.
func waitBlocked(t *testing.T, dsn string, done <-chan struct{}) (blocked bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Error(err)
		return false
	}
	defer conn.Close(context.Background())
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE NOT granted").Scan(&n); err != nil {
			t.Error(err)
			return false
		}
		if n > 0 {
			return true
		}
		select {
		case <-done:
			return false
		case <-ctx.Done():
			t.Error("neither blocked nor done within 20s")
			return false
		case <-tick.C:
		}
	}
}

// TestPGFencingAtomic holds a save of instance A between its epoch check
// and its commit, and meanwhile sends through instance B a write that
// conflicts with it: a claim of the next epoch, or a different event at the
// same index. The rival must wait for the save's commit (a lock), never
// complete first: else a save checked against an old epoch, or against an
// absent event, would be committed after a newer epoch or event was
// acknowledged, and both instances would accept conflicting writes.
func TestPGFencingAtomic(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rival func(ctx context.Context, b *Client) error
		check func(t *testing.T, rivalErr error, a *Client)
	}{
		{"claim", func(ctx context.Context, b *Client) error {
			_, err := b.ClaimEpoch(ctx, "chat", 1, 2, "core-b")
			return err
		}, func(t *testing.T, rivalErr error, a *Client) {
			if rivalErr != nil {
				t.Fatalf("claim after the save: %v", rivalErr)
			}
		}},
		{"same index", func(ctx context.Context, b *Client) error {
			_, err := b.Save(ctx, SaveRequest{ChatID: "x", Service: "chat", Epoch: 1, Writer: "core-b", Events: []*chatpb.Event{ev("x", 1, "rival")}})
			return err
		}, func(t *testing.T, rivalErr error, a *Client) {
			if !errors.Is(rivalErr, ErrConflict) {
				t.Fatalf("rival save: %v, want ErrConflict", rivalErr)
			}
			if tr, err := a.Transcript(context.Background(), "x"); err != nil || tr.Events[0].GetText() != "held" {
				t.Fatalf("stored %v %v, want the held save's event", tr, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := newPGDatabase(t)
			srvA, a := newPGServer(t, dsn)
			_, b := newPGServer(t, dsn)
			ctx := context.Background()
			if _, err := a.ClaimEpoch(ctx, "chat", 0, 1, "core-a"); err != nil {
				t.Fatal(err)
			}
			rivalDone := make(chan struct{})
			var rivalErr error
			var rivalFirst atomic.Bool
			var once sync.Once
			srvA.store.(*pgStore).beforeCommit = func() {
				once.Do(func() {
					go func() {
						rivalErr = tc.rival(ctx, b)
						close(rivalDone)
					}()
					if !waitBlocked(t, dsn, rivalDone) {
						rivalFirst.Store(true)
					}
				})
			}
			_, err := a.Save(ctx, SaveRequest{ChatID: "x", Service: "chat", Epoch: 1, Writer: "core-a", Events: []*chatpb.Event{ev("x", 1, "held")}})
			<-rivalDone
			if rivalFirst.Load() {
				t.Fatalf("the rival %s completed (%v) while a save checked before it was uncommitted; the save then got %v", tc.name, rivalErr, err)
			}
			if err != nil {
				t.Fatalf("held save: %v", err)
			}
			tc.check(t, rivalErr, a)
		})
	}
}

// TestPGDeleteAtomic holds a GDPR delete of instance A between its writes
// and its commit while instance B receives a save of the same chat: the
// save waits for the delete and is then refused by the tombstone (it must
// not read "no tombstone" before the delete commits and write the chat
// back). The tombstone refuses saves through every instance, and a new
// instance on the database finds it.
func TestPGDeleteAtomic(t *testing.T) {
	dsn := newPGDatabase(t)
	srvA, a := newPGServer(t, dsn)
	_, b := newPGServer(t, dsn)
	ctx := context.Background()
	save := func(c *Client, i uint64) error {
		_, err := c.Save(ctx, SaveRequest{ChatID: "gone", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("gone", i, i)})
		return err
	}
	if err := save(a, 1); err != nil {
		t.Fatal(err)
	}
	rivalDone := make(chan struct{})
	var rivalErr error
	var rivalFirst atomic.Bool
	var once sync.Once
	srvA.store.(*pgStore).beforeCommit = func() {
		once.Do(func() {
			go func() {
				rivalErr = save(b, 2)
				close(rivalDone)
			}()
			if !waitBlocked(t, dsn, rivalDone) {
				rivalFirst.Store(true)
			}
		})
	}
	res, err := a.DeleteChat(ctx, testToken, "gone")
	<-rivalDone
	if err != nil || len(res.Deleted) != 1 {
		t.Fatalf("delete: %+v %v", res, err)
	}
	if rivalFirst.Load() {
		t.Fatalf("a save of the chat completed (%v) while its delete was uncommitted", rivalErr)
	}
	if !errors.Is(rivalErr, ErrDeleted) {
		t.Fatalf("save racing the delete: %v, want ErrDeleted", rivalErr)
	}
	_, c := newPGServer(t, dsn) // a third instance, opened after the delete
	for name, cl := range map[string]*Client{"a": a, "b": b, "new": c} {
		if _, err := cl.Transcript(ctx, "gone"); !errors.Is(err, ErrNotFound) {
			t.Errorf("instance %s reads the deleted chat: %v", name, err)
		}
		if err := save(cl, 3); !errors.Is(err, ErrDeleted) {
			t.Errorf("instance %s: save after the delete: %v, want ErrDeleted", name, err)
		}
	}
}
