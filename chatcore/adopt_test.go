package chatcore

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/ucsmock"
)

// TestAdoptPairAfterBothCoresLost: pair 2's only core dies with every
// acknowledged event saved (transcript-auto-save 1, and the test waits for
// the saves); pair 1's primary, asked about a pair-2 chat, first refuses
// while pair 2's lease lives, then claims pair 2's epoch, restores the chat
// from UCS with the failover notices and serves it; the other live chat of
// pair 2 is restored without being asked for; a core of pair 2 that comes
// back cannot claim its pair's epoch while the adopter holds it.
func TestAdoptPairAfterBothCoresLost(t *testing.T) {
	store := ucsmock.NewMemStore(1)
	save := func(c *Config) { c.TranscriptAutoSave = AutoSaveEveryMessage; c.EpochLease = 500 * time.Millisecond }
	mm := &memMembers{}
	dead := startNode(t, "core-2a", RolePrimary, "", listen(t), store, func(c *Config) { save(c); c.Pair = "2" }, WithMembership(mm))
	waitFor(t, "core-2a primary", func() bool { return dead.c.role.IsPrimary() })
	cust, _ := dead.chat(t)
	other, _ := dead.chat(t)
	for i, text := range []string{"one", "two", "three"} {
		if _, err := dead.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text, ClientMessageId: text}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	acked := len(dead.log(cust.SessionId))
	waitFor(t, "every acknowledged event saved", func() bool {
		tr, err := store.Transcript(ctxT(t), cust.SessionId)
		return err == nil && len(tr.Events) >= acked
	})
	oldEpoch := dead.c.Epoch()
	dead.kill()

	adopter := startNode(t, "core-a", RolePrimary, "", listen(t), store, save)
	waitFor(t, "core-a primary", func() bool { return adopter.c.role.IsPrimary() })
	var (
		resp       *chatpb.SendResponse
		err        error
		sawRefusal bool
	)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err = adopter.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "after", ClientMessageId: "after"})
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("send to the adopter: %v (want UNAVAILABLE until pair 2's lease lapsed)", err)
		}
		sawRefusal = true
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the adopter never served the chat of the lost pair: %v", err)
	}
	_ = sawRefusal // the lease may lapse before the first call on a slow machine
	ep, err := store.Epoch(ctxT(t), "hachat-2")
	if err != nil || ep.Holder != "core-a" || ep.Epoch <= oldEpoch {
		t.Fatalf("pair 2's epoch after the adoption: %+v %v (old epoch %d): want core-a's, newer", ep, err, oldEpoch)
	}
	evs := (&testCore{c: adopter.c, cl: adopter.cl}).events(t, cust)
	var texts []string
	notices := map[chatpb.EventKind]int{}
	for _, e := range evs {
		if e.Kind == chatpb.EventKind_EVENT_KIND_MESSAGE {
			texts = append(texts, e.Text)
		}
		if e.GetAttrs()["reason"] == "failover" {
			notices[e.Kind]++
		}
	}
	if want := []string{"one", "two", "three", "after"}; len(texts) != 4 || texts[0] != want[0] || texts[2] != want[2] || texts[3] != want[3] {
		t.Fatalf("messages after the adoption %q, want %q", texts, want)
	}
	if resp.GetIndex() <= uint64(acked) {
		t.Fatalf("new message at index %d, not after the %d acknowledged", resp.GetIndex(), acked)
	}
	if notices[chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED] != 2 || notices[chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED] != 2 {
		t.Fatalf("failover notices %v: want a disconnected and a reconnected per participant", notices)
	}
	waitFor(t, "the other chat of pair 2 restored unasked", func() bool { return adopter.c.session(other.SessionId) != nil })
	if got := testutil.ToFloat64(adopter.c.adopted.restored.WithLabelValues("2")); got != 2 {
		t.Fatalf("hachat_core_adopted_sessions_total{pair=2} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(adopter.c.adopted.gauge.WithLabelValues("2")); got != 1 {
		t.Fatalf("hachat_core_adopted_pairs{pair=2} = %v, want 1", got)
	}

	// Pair 2's core comes back (paired: it defers to a live lease): it
	// must not take its pair's epoch from the adopter.
	back := startNode(t, "core-2a", RolePrimary, "", listen(t), store, func(c *Config) { save(c); c.Pair = "2" }, WithMembership(&memMembers{}))
	time.Sleep(4 * 500 * time.Millisecond) // several leases: the claim is refused all along
	if back.c.role.IsPrimary() {
		t.Fatal("pair 2's returning core became primary while the adopter holds pair 2's epoch")
	}
	if ep, _ := store.Epoch(ctxT(t), "hachat-2"); ep.Holder != "core-a" {
		t.Fatalf("pair 2's epoch taken from the adopter: %+v", ep)
	}
	if _, err := adopter.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "still", ClientMessageId: "still"}); err != nil {
		t.Fatalf("the adopter stopped serving the adopted chat: %v", err)
	}

	// Pair 2's epoch moves on without the adopter (as if its renewals had
	// failed for a lease and a core of pair 2 claimed it): the adopter
	// loses the adoption and refuses pair 2's chats, a save fenced at
	// hachat-2 does not step it down as pair 1's primary.
	cur, err := store.Epoch(ctxT(t), "hachat-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.ClaimEpoch(ctxT(t), "hachat-2", cur.Epoch, cur.Epoch+100, "core-2x"); err != nil {
		t.Fatal(err)
	}
	_, _ = adopter.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "raced", ClientMessageId: "raced"})
	waitFor(t, "the adoption lost", func() bool { return adopter.c.adopted.adoptionLost("2") })
	if _, err := adopter.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "late", ClientMessageId: "late"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("send in a chat of a pair whose adoption was lost: %v, want UNAVAILABLE", err)
	}
	if !adopter.c.role.IsPrimary() {
		t.Fatal("the adopter stepped down as its own pair's primary for another pair's epoch")
	}
	if got := testutil.ToFloat64(adopter.c.adopted.gauge.WithLabelValues("2")); got != 0 {
		t.Fatalf("hachat_core_adopted_pairs{pair=2} = %v after the adoption was lost", got)
	}
}

// TestNoAdoptionWhileThePairHasALiveCore: a pair whose backup gossip shows
// alive fails over by itself (its replica may be fresher than UCS): a
// primary of another pair asked about its chat refuses and takes nothing.
func TestNoAdoptionWhileThePairHasALiveCore(t *testing.T) {
	store := ucsmock.NewMemStore(1)
	save := func(c *Config) { c.TranscriptAutoSave = AutoSaveEveryMessage; c.EpochLease = 300 * time.Millisecond }
	dead := startNode(t, "core-2a", RolePrimary, "", listen(t), store, func(c *Config) { save(c); c.Pair = "2" })
	waitFor(t, "core-2a primary", func() bool { return dead.c.role.IsPrimary() })
	cust, _ := dead.chat(t)
	dead.kill()

	mm := &memMembers{}
	mm.publish(membership.Event{Type: membership.EventJoined, Member: membership.Member{Name: "core-2b", State: membership.StateAlive,
		Meta: membership.Meta{Kind: membership.KindCore, Role: RoleBackup, Pair: "2"}}})
	adopter := startNode(t, "core-a", RolePrimary, "", listen(t), store, save, WithMembership(mm))
	waitFor(t, "core-a primary", func() bool { return adopter.c.role.IsPrimary() })
	time.Sleep(3 * 300 * time.Millisecond) // core-2a's lease has lapsed: only the live backup holds the adopter back
	_, err := adopter.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "x"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "live core") {
		t.Fatalf("send to another pair's primary while pair 2's backup lives: %v, want UNAVAILABLE naming the live core", err)
	}
	if ep, _ := store.Epoch(ctxT(t), "hachat-2"); ep.Holder != "core-2a" {
		t.Fatalf("pair 2's epoch taken while its backup lives: %+v", ep)
	}
	if adopter.c.session(cust.SessionId) != nil {
		t.Fatal("the chat was restored without an adoption")
	}
}

// TestAdoptedPairReleased: once every chat of the adopted pair ended and
// was saved, the adopter lets the pair go (stops renewing its lease), and
// a core of that pair coming back becomes its primary again.
func TestAdoptedPairReleased(t *testing.T) {
	store := ucsmock.NewMemStore(1)
	save := func(c *Config) { c.TranscriptAutoSave = AutoSaveEveryMessage; c.EpochLease = 300 * time.Millisecond }
	dead := startNode(t, "core-2a", RolePrimary, "", listen(t), store, func(c *Config) { save(c); c.Pair = "2" })
	waitFor(t, "core-2a primary", func() bool { return dead.c.role.IsPrimary() })
	cust, _ := dead.chat(t)
	// A core without a peer keeps no second copy: what it acknowledged is
	// in UCS only once saved, so the whole log must be there before the kill.
	acked := len(dead.log(cust.SessionId))
	waitFor(t, "the chat saved", func() bool {
		tr, err := store.Transcript(ctxT(t), cust.SessionId)
		return err == nil && len(tr.Events) >= acked
	})
	dead.kill()

	adopter := startNode(t, "core-a", RolePrimary, "", listen(t), store, save)
	waitFor(t, "core-a primary", func() bool { return adopter.c.role.IsPrimary() })
	var lastErr error
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last send to the adopter: %v", lastErr)
		}
	})
	waitFor(t, "the chat of pair 2 served by the adopter", func() bool {
		_, lastErr = adopter.cl.Send(ctxT(t), &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "x", ClientMessageId: "x"})
		return lastErr == nil
	})
	back := startNode(t, "core-2a", RolePrimary, "", listen(t), store, func(c *Config) { save(c); c.Pair = "2" }, WithMembership(&memMembers{}))
	time.Sleep(3 * 300 * time.Millisecond)
	if back.c.role.IsPrimary() {
		t.Fatal("pair 2's core took its epoch back while the adopter serves a live chat of it")
	}
	if _, err := adopter.cl.Leave(ctxT(t), &chatpb.LeaveRequest{Auth: cust}); err != nil {
		t.Fatalf("leave: %v", err)
	}
	waitFor(t, "pair 2's core primary again", func() bool { return back.c.role.IsPrimary() })
	if ep, _ := store.Epoch(ctxT(t), "hachat-2"); ep.Holder != "core-2a" {
		t.Fatalf("pair 2's epoch after the release: %+v, want core-2a's", ep)
	}
	if !adopter.c.role.IsPrimary() {
		t.Fatal("the adopter stepped down")
	}
}
