package chatcore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gatedStore holds the Save that carries the second copy of one client
// message id until the test releases it; every other call goes through.
type gatedStore struct {
	*memStore
	cmid    string
	entered chan struct{} // closed when the gated Save arrives
	release chan struct{} // closed by the test to let it go on
	once    sync.Once
}

func (g *gatedStore) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	for _, ev := range req.Events {
		if ev.ClientMessageId == g.cmid {
			g.once.Do(func() { close(g.entered) })
			select {
			case <-g.release:
			case <-ctx.Done():
				return SaveResult{}, ctx.Err()
			}
			break
		}
	}
	return g.memStore.Save(ctx, req)
}

// TestFencedWhileSecondCopyInFlight steps the primary down between "second
// copy done" and "commit": with the backup away the copy goes to UCS, whose
// Save is held until the core has been fenced by a newer epoch, then
// succeeds. The core must neither commit nor acknowledge the message: a
// primary stepped down while its copy was in flight is no longer the one
// that decides the next index.
func TestFencedWhileSecondCopyInFlight(t *testing.T) {
	store := &gatedStore{memStore: newMemStore(), cmid: "in-flight",
		entered: make(chan struct{}), release: make(chan struct{})}
	gone := listen(t)
	peer := gone.Addr().String()
	gone.Close() // paired, but the backup is away: second copies go to UCS
	mod := func(c *Config) {
		c.TranscriptAutoSave = AutoSaveAtEnd
		c.TranscriptSaveTimeout = 10 * time.Second // the gate, not the timeout, decides
	}
	n := startNode(t, "core-a", RolePrimary, peer, listen(t), store, mod)
	waitFor(t, "core-a primary", func() bool { return n.c.role.IsPrimary() })
	cust, _ := n.chat(t)
	ctx := ctxT(t)
	before, err := n.cl.Send(ctx, msg(cust, "before", "before"))
	if err != nil {
		t.Fatalf("send before the fence: %v", err)
	}

	type result struct {
		r   *chatpb.SendResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := n.cl.Send(ctx, msg(cust, "in flight", store.cmid))
		done <- result{r, err}
	}()
	select {
	case <-store.entered:
	case r := <-done:
		t.Fatalf("the send returned before its second copy reached UCS: %v %v", r.r, r.err)
	case <-ctx.Done():
		t.Fatal("the second copy never reached UCS")
	}
	epoch := n.c.role.Epoch()
	n.c.stepDown("test: a newer primary fenced this one while its copy was in flight", epoch+1)
	close(store.release) // the copy itself succeeds

	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		t.Fatal("the send never returned")
	}
	if res.err == nil {
		t.Errorf("a fenced primary acknowledged %q at index %d", store.cmid, res.r.GetIndex())
	} else if status.Code(res.err) != codes.Unavailable {
		t.Errorf("send after the fence: %v (want a retryable not-primary error)", res.err)
	}
	for _, ev := range n.log(cust.SessionId) {
		if ev.ClientMessageId == store.cmid {
			t.Errorf("a fenced primary committed %q at index %d (epoch %d, fenced by %d)", store.cmid, ev.Index, ev.Epoch, epoch+1)
		}
		if ev.Index > before.Index {
			t.Errorf("the log moved past the last acknowledged index %d: %v", before.Index, ev)
		}
	}
}
