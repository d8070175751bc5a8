package ucsmock

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// ev builds a message event of chat at index.
func ev(chat string, index uint64, text string) *chatpb.Event {
	return &chatpb.Event{
		SessionId: chat,
		Index:     index,
		Kind:      chatpb.EventKind_EVENT_KIND_MESSAGE,
		From:      &chatpb.Participant{Id: "p1", Nickname: "Ann", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER},
		Text:      text,
		UtcUnixMs: 1_700_000_000_000 + int64(index)*1000,
	}
}

// evs builds message events of chat at indexes from..to.
func evs(chat string, from, to uint64) []*chatpb.Event {
	var out []*chatpb.Event
	for i := from; i <= to; i++ {
		out = append(out, ev(chat, i, fmt.Sprintf("message %d", i)))
	}
	return out
}

// storeFactories yields every Store implementation with a way to inject
// faults, so that the same semantics tests run against all of them.
type faultStore interface {
	Store
	Chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error)
	SetFaults(ctx context.Context, token string, f Faults) error
	ClearFaults(ctx context.Context, token string) error
	Faults(ctx context.Context, token string) (Faults, error)
	Stats(ctx context.Context, token string) (Stats, error)
}

// testStores returns the stores under test; newHTTPStore is added by the
// server tests.
var testStores = map[string]func(t *testing.T) faultStore{
	"mem": func(t *testing.T) faultStore { return NewMemStore(1) },
}

func forEachStore(t *testing.T, fn func(t *testing.T, s faultStore)) {
	t.Helper()
	for name, mk := range testStores {
		t.Run(name, func(t *testing.T) { fn(t, mk(t)) })
	}
}

func TestStoreSaveAndRead(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		if _, err := s.Transcript(ctx, "c1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown chat: err %v, want ErrNotFound", err)
		}
		// Out of order, with a gap: stored in index order.
		in := []*chatpb.Event{ev("c1", 3, "three"), ev("c1", 1, "one"), ev("c1", 5, "five")}
		res, err := s.Save(ctx, SaveRequest{ChatID: "c1", Service: "chat", Epoch: 1, Writer: "core-a", Events: in})
		if err != nil {
			t.Fatal(err)
		}
		if res.Saved != 3 || res.HighestIndex != 5 {
			t.Fatalf("result %+v, want saved 3 highest 5", res)
		}
		tr, err := s.Transcript(ctx, "c1")
		if err != nil {
			t.Fatal(err)
		}
		if tr.Service != "chat" || tr.Ended || tr.Writer != "core-a" || tr.Epoch != 1 || len(tr.Events) != 3 {
			t.Fatalf("transcript %+v", tr)
		}
		for i, want := range []uint64{1, 3, 5} {
			if tr.Events[i].GetIndex() != want {
				t.Fatalf("event %d index %d, want %d", i, tr.Events[i].GetIndex(), want)
			}
		}
		if !proto.Equal(tr.Events[0], in[1]) {
			t.Fatalf("event 1 = %v, want %v", tr.Events[0], in[1])
		}
		// Ending with no events marks the chat ended; it stays ended.
		if _, err := s.Save(ctx, SaveRequest{ChatID: "c1", Service: "chat", Epoch: 1, Ended: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Save(ctx, SaveRequest{ChatID: "c1", Service: "chat", Epoch: 1, Events: evs("c1", 6, 6)}); err != nil {
			t.Fatal(err)
		}
		tr, err = s.Transcript(ctx, "c1")
		if err != nil {
			t.Fatal(err)
		}
		if !tr.Ended || len(tr.Events) != 4 {
			t.Fatalf("after end: ended %v, %d events", tr.Ended, len(tr.Events))
		}
	})
}

func TestStoreIdempotency(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		save := func(epoch uint64, events ...*chatpb.Event) (SaveResult, error) {
			return s.Save(ctx, SaveRequest{ChatID: "c", Service: "chat", Epoch: epoch, Writer: "w", Events: events})
		}
		if _, err := save(2, evs("c", 1, 3)...); err != nil {
			t.Fatal(err)
		}
		// Same content again: fine, nothing written.
		res, err := save(2, evs("c", 1, 4)...)
		if err != nil {
			t.Fatal(err)
		}
		if res.Saved != 1 || res.Unchanged != 3 || res.HighestIndex != 4 {
			t.Fatalf("resave: %+v, want saved 1 unchanged 3 highest 4", res)
		}
		// Different content at a stored index, same epoch: conflict, nothing changes.
		if _, err := save(2, ev("c", 5, "new"), ev("c", 2, "changed")); !errors.Is(err, ErrConflict) {
			t.Fatalf("same-epoch overwrite: err %v, want ErrConflict", err)
		}
		tr, _ := s.Transcript(ctx, "c")
		if len(tr.Events) != 4 || tr.Events[1].GetText() != "message 2" {
			t.Fatalf("conflict changed the transcript: %v", tr.Events)
		}
		// A newer epoch may overwrite.
		if res, err := save(3, ev("c", 2, "changed")); err != nil || res.Saved != 1 {
			t.Fatalf("newer-epoch overwrite: %+v %v", res, err)
		}
		// ...but not again within its own epoch.
		if _, err := save(3, ev("c", 2, "again")); !errors.Is(err, ErrConflict) {
			t.Fatalf("second overwrite in epoch 3: err %v, want ErrConflict", err)
		}
		// An index first stored by epoch 2 may still be overwritten by epoch 3.
		if _, err := save(3, ev("c", 3, "changed 3")); err != nil {
			t.Fatalf("overwrite of an epoch-2 index by epoch 3: %v", err)
		}
		tr, _ = s.Transcript(ctx, "c")
		if tr.Events[1].GetText() != "changed" || tr.Events[2].GetText() != "changed 3" || tr.Epoch != 3 {
			t.Fatalf("transcript after overwrites: %v", tr)
		}
		// A chat cannot move to another service.
		if _, err := s.Save(ctx, SaveRequest{ChatID: "c", Service: "other", Epoch: 9, Events: evs("c", 9, 9)}); !errors.Is(err, ErrConflict) {
			t.Fatalf("service change: err %v, want ErrConflict", err)
		}
	})
}

func TestStoreFencing(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		if e, err := s.Epoch(ctx, "chat"); err != nil || e != (Epoch{}) {
			t.Fatalf("fresh epoch: %+v %v", e, err)
		}
		if _, err := s.Save(ctx, SaveRequest{ChatID: "a", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("a", 1, 1)}); err != nil {
			t.Fatal(err)
		}
		if e, _ := s.Epoch(ctx, "chat"); e.Epoch != 1 || e.Holder != "core-a" {
			t.Fatalf("epoch after save: %+v", e)
		}
		// Claim CAS: wrong expect loses and reports the current epoch.
		_, err := s.ClaimEpoch(ctx, "chat", 0, 2, "core-b")
		var ce *EpochConflictError
		if !errors.As(err, &ce) || !errors.Is(err, ErrEpochConflict) || ce.Epoch != 1 || ce.Holder != "core-a" {
			t.Fatalf("claim with stale expect: %v", err)
		}
		e, err := s.ClaimEpoch(ctx, "chat", 1, 2, "core-b")
		if err != nil || (e.Epoch != 2 || e.Holder != "core-b") {
			t.Fatalf("claim: %+v %v", e, err)
		}
		// A retry of the successful claim succeeds; a rival's claim of the same epoch does not.
		if e, err := s.ClaimEpoch(ctx, "chat", 1, 2, "core-b"); err != nil || e.Epoch != 2 {
			t.Fatalf("claim retry: %+v %v", e, err)
		}
		if _, err := s.ClaimEpoch(ctx, "chat", 1, 2, "core-c"); !errors.Is(err, ErrEpochConflict) {
			t.Fatalf("rival claim: %v", err)
		}
		// The old primary is fenced, and nothing it sends is stored.
		_, err = s.Save(ctx, SaveRequest{ChatID: "a", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("a", 2, 2)})
		var se *StaleEpochError
		if !errors.As(err, &se) || !errors.Is(err, ErrStaleEpoch) || se.Epoch != 2 || se.Holder != "core-b" {
			t.Fatalf("stale save: %v", err)
		}
		if tr, _ := s.Transcript(ctx, "a"); len(tr.Events) != 1 {
			t.Fatalf("stale save stored events: %v", tr.Events)
		}
		// Other services are not fenced by this one.
		if _, err := s.Save(ctx, SaveRequest{ChatID: "b", Service: "other", Epoch: 0, Events: evs("b", 1, 1)}); err != nil {
			t.Fatalf("other service: %v", err)
		}
		// A newer epoch in a save raises the service's epoch; claims must then expect it.
		if _, err := s.Save(ctx, SaveRequest{ChatID: "a", Service: "chat", Epoch: 5, Writer: "core-x", Events: evs("a", 2, 2)}); err != nil {
			t.Fatal(err)
		}
		if e, _ := s.Epoch(ctx, "chat"); e.Epoch != 5 || e.Holder != "core-x" {
			t.Fatalf("epoch after newer save: %+v", e)
		}
		if _, err := s.ClaimEpoch(ctx, "chat", 2, 3, "core-b"); !errors.Is(err, ErrEpochConflict) {
			t.Fatalf("claim below a save-raised epoch: %v", err)
		}
		st, err := s.Stats(ctx, testToken)
		if err != nil {
			t.Fatal(err)
		}
		if st.RejectedStale != 1 || st.Claims != 2 || st.ClaimsLost != 3 || st.Saves != 3 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestStoreBadInput(t *testing.T) {
	long := string(make([]byte, 300))
	cases := []struct {
		name string
		req  SaveRequest
	}{
		{"no chat id", SaveRequest{Service: "chat", Events: evs("", 1, 1)}},
		{"no service", SaveRequest{ChatID: "c", Events: evs("c", 1, 1)}},
		{"long chat id", SaveRequest{ChatID: long, Service: "chat"}},
		{"control char", SaveRequest{ChatID: "c\n", Service: "chat"}},
		{"index 0", SaveRequest{ChatID: "c", Service: "chat", Events: []*chatpb.Event{ev("c", 0, "x")}}},
		{"other session", SaveRequest{ChatID: "c", Service: "chat", Events: []*chatpb.Event{ev("c", 1, "x"), ev("d", 2, "x")}}},
		{"nil event", SaveRequest{ChatID: "c", Service: "chat", Events: []*chatpb.Event{nil}}},
		{"different duplicates", SaveRequest{ChatID: "c", Service: "chat", Events: []*chatpb.Event{ev("c", 1, "x"), ev("c", 1, "y")}}},
	}
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		for _, tc := range cases {
			if _, err := s.Save(ctx, tc.req); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: err %v, want ErrInvalid", tc.name, err)
			}
		}
		if _, err := s.Transcript(ctx, "c"); !errors.Is(err, ErrNotFound) {
			t.Errorf("bad input stored something: %v", err)
		}
		if e, _ := s.Epoch(ctx, "chat"); e.Epoch != 0 {
			t.Errorf("bad input raised the epoch to %d", e.Epoch)
		}
		for _, c := range []struct {
			expect, epoch uint64
			holder        string
		}{{0, 0, "h"}, {3, 2, "h"}, {0, 1, ""}} {
			if _, err := s.ClaimEpoch(ctx, "chat", c.expect, c.epoch, c.holder); !errors.Is(err, ErrInvalid) {
				t.Errorf("claim %+v: err %v, want ErrInvalid", c, err)
			}
		}
		// Identical duplicates are merged.
		res, err := s.Save(ctx, SaveRequest{ChatID: "c", Service: "chat", Events: []*chatpb.Event{ev("c", 1, "x"), ev("c", 1, "x")}})
		if err != nil || res.Saved != 1 {
			t.Errorf("identical duplicates: %+v %v", res, err)
		}
	})
}

func TestStoreFaults(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		save := func(i uint64) error {
			_, err := s.Save(ctx, SaveRequest{ChatID: "c", Service: "chat", Epoch: 1, Events: evs("c", i, i)})
			return err
		}
		if err := save(1); err != nil {
			t.Fatal(err)
		}
		steps := []struct {
			name    string
			f       Faults
			saveErr error
			readErr error
		}{
			{"outage", Faults{Outage: true}, ErrUnavailable, ErrUnavailable},
			{"non-recoverable", Faults{NonRecoverable: true}, ErrNonRecoverable, nil},
			{"recoverable 1.0", Faults{RecoverableErrorRate: 1}, ErrUnavailable, nil},
			{"latency", Faults{LatencyMs: 30}, nil, nil},
			{"none", Faults{}, nil, nil},
		}
		for i, st := range steps {
			if err := s.SetFaults(ctx, testToken, st.f); err != nil {
				t.Fatalf("%s: set faults: %v", st.name, err)
			}
			if got, err := s.Faults(ctx, testToken); err != nil || got != st.f {
				t.Fatalf("%s: faults read back %+v %v", st.name, got, err)
			}
			start := time.Now()
			err := save(uint64(i + 2))
			if !errors.Is(err, st.saveErr) || (st.saveErr == nil && err != nil) {
				t.Errorf("%s: save err %v, want %v", st.name, err, st.saveErr)
			}
			if st.f.LatencyMs > 0 && time.Since(start) < time.Duration(st.f.LatencyMs)*time.Millisecond {
				t.Errorf("%s: save took %v, want at least %dms", st.name, time.Since(start), st.f.LatencyMs)
			}
			_, err = s.Transcript(ctx, "c")
			if !errors.Is(err, st.readErr) || (st.readErr == nil && err != nil) {
				t.Errorf("%s: read err %v, want %v", st.name, err, st.readErr)
			}
		}
		if err := s.ClearFaults(ctx, testToken); err != nil {
			t.Fatal(err)
		}
		tr, err := s.Transcript(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		// Saves that failed by fault stored nothing: indexes 1, 5 (latency) and 6 (none).
		var got []uint64
		for _, e := range tr.Events {
			got = append(got, e.GetIndex())
		}
		if fmt.Sprint(got) != "[1 5 6]" {
			t.Fatalf("stored indexes %v, want [1 5 6]", got)
		}
		st, _ := s.Stats(ctx, testToken)
		if st.FaultsInjected != 5 { // outage (save and read), non-recoverable, recoverable, latency
			t.Fatalf("faultsInjected %d, want 5", st.FaultsInjected)
		}
		if err := s.SetFaults(ctx, testToken, Faults{RecoverableErrorRate: 1.5}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("bad rate: %v", err)
		}
		if err := s.SetFaults(ctx, testToken, Faults{LatencyMs: -1}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("bad latency: %v", err)
		}
	})
}

func TestStoreRecoverableRate(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		if err := s.SetFaults(ctx, testToken, Faults{RecoverableErrorRate: 0.5}); err != nil {
			t.Fatal(err)
		}
		// Each claim is retried until it succeeds: a recoverable error changes nothing.
		failed := 0
		const n = 200
		for i := uint64(1); i <= n; i++ {
			for {
				_, err := s.ClaimEpoch(ctx, "chat", i-1, i, "h")
				if err == nil {
					break
				}
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("claim %d: %v", i, err)
				}
				failed++
			}
		}
		// failed/(n+failed) is about 0.5, so failed is about n.
		if failed < n/2 || failed > 2*n {
			t.Fatalf("%d failures for %d claims at rate 0.5", failed, n)
		}
		if e, _ := s.Epoch(ctx, "chat"); e.Epoch != n {
			t.Fatalf("epoch %d, want %d", e.Epoch, n)
		}
	})
}

// TestStoreConcurrent has writers race on overlapping saves of the same
// chats (as a primary's resends do), then claimants race on the next epoch:
// every save succeeds, the transcripts are complete, and one claim wins.
func TestStoreConcurrent(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		const writers, chats, perChat = 6, 3, 20
		errc := make(chan error, writers*chats*perChat+writers)
		done := make(chan struct{})
		for w := range writers {
			go func() {
				defer func() { done <- struct{}{} }()
				for i := uint64(1); i <= perChat; i++ {
					for c := range chats {
						chat := fmt.Sprintf("c%d", c)
						// Each save repeats the previous event: overlap is normal.
						_, err := s.Save(ctx, SaveRequest{ChatID: chat, Service: "chat", Epoch: 1, Writer: fmt.Sprint(w), Events: evs(chat, max(1, i-1), i)})
						if err != nil {
							errc <- err
						}
					}
				}
			}()
		}
		for range writers {
			<-done
		}
		for w := range writers {
			go func() {
				defer func() { done <- struct{}{} }()
				if _, err := s.ClaimEpoch(ctx, "chat", 1, 2, fmt.Sprintf("claimant-%d", w)); err != nil && !errors.Is(err, ErrEpochConflict) {
					errc <- err
				}
			}()
		}
		for range writers {
			<-done
		}
		close(errc)
		for err := range errc {
			t.Error(err)
		}
		for c := range chats {
			tr, err := s.Transcript(ctx, fmt.Sprintf("c%d", c))
			if err != nil || len(tr.Events) != perChat {
				t.Fatalf("c%d: %v events, err %v", c, len(tr.Events), err)
			}
		}
		st, _ := s.Stats(ctx, testToken)
		if st.Claims != 1 || st.ClaimsLost != writers-1 {
			t.Fatalf("claims %d won %d lost, want 1 and %d", st.Claims, st.ClaimsLost, writers-1)
		}
	})
}

func TestStoreChats(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		if got, err := s.Chats(ctx, ChatFilter{}); err != nil || len(got) != 0 {
			t.Fatalf("empty store: %v %v", got, err)
		}
		saves := []SaveRequest{
			{ChatID: "b", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("b", 1, 3)},
			{ChatID: "a", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("a", 1, 1), Ended: true},
			{ChatID: "c", Service: "other", Epoch: 0, Writer: "core-x", Events: evs("c", 2, 2)},
		}
		for _, r := range saves {
			if _, err := s.Save(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		ids := func(f ChatFilter) string {
			got, err := s.Chats(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, c := range got {
				out = append(out, fmt.Sprintf("%s/%s/%v/%d", c.ChatID, c.Service, c.Ended, c.HighestIndex))
			}
			return fmt.Sprint(out)
		}
		for _, tc := range []struct {
			f    ChatFilter
			want string
		}{
			{ChatFilter{}, "[a/chat/true/1 b/chat/false/3 c/other/false/2]"},
			{ChatFilter{Service: "chat"}, "[a/chat/true/1 b/chat/false/3]"},
			{ChatFilter{Service: "chat", Live: true}, "[b/chat/false/3]"},
			{ChatFilter{Ended: true}, "[a/chat/true/1]"},
			{ChatFilter{Service: "none"}, "[]"},
		} {
			if got := ids(tc.f); got != tc.want {
				t.Errorf("Chats(%+v) = %s, want %s", tc.f, got, tc.want)
			}
		}
	})
}

// TestStoreIndexOrder: a transcript comes back in numeric index order past
// one digit (PostgreSQL once sorted it as text: 1, 10, 11, 2, ...), and
// the highest index is numeric too.
func TestStoreIndexOrder(t *testing.T) {
	forEachStore(t, func(t *testing.T, s faultStore) {
		ctx := context.Background()
		in := append(evs("o", 1, 12), ev("o", 100, "hundred"))
		res, err := s.Save(ctx, SaveRequest{ChatID: "o", Service: "chat", Epoch: 1, Events: in})
		if err != nil || res.HighestIndex != 100 {
			t.Fatalf("save: %+v %v", res, err)
		}
		tr, err := s.Transcript(ctx, "o")
		if err != nil || len(tr.Events) != len(in) {
			t.Fatalf("transcript: %v %v", tr, err)
		}
		for i, e := range tr.Events {
			if e.GetIndex() != in[i].GetIndex() {
				t.Fatalf("event %d has index %d, want %d", i, e.GetIndex(), in[i].GetIndex())
			}
		}
		chats, err := s.Chats(ctx, ChatFilter{})
		if err != nil || len(chats) != 1 || chats[0].HighestIndex != 100 {
			t.Fatalf("chats: %+v %v", chats, err)
		}
	})
}
