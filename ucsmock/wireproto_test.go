package ucsmock

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// protoBody encodes reqs as a binary batch body.
func protoBody(t testing.TB, reqs ...SaveRequest) []byte {
	t.Helper()
	var b []byte
	for _, r := range reqs {
		var err error
		if b, err = appendSaveProto(b, r); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// postProto posts a binary batch body and decodes a 200 answer.
func postProto(t *testing.T, h http.Handler, body []byte) (int, batchAnswer, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/ucs/v1/transcripts:batch", bytes.NewReader(body))
	req.Header.Set("Content-Type", ContentTypeBatchProto)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var ans batchAnswer
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
			t.Fatalf("decode answer %q: %v", rec.Body, err)
		}
	}
	return rec.Code, ans, rec.Body.String()
}

// TestBatchProtoRoundTrip: what appendSaveProto writes, parseBatchProto
// reads back unchanged, save after save.
func TestBatchProtoRoundTrip(t *testing.T) {
	reqs := []SaveRequest{
		{ChatID: "a", Service: "chat", Epoch: 7, Writer: "core-a", Events: evs("a", 1, 3), Ended: true},
		{ChatID: "b", Service: "chat"},                                      // no events, epoch 0, no writer
		{ChatID: "c", Service: "s", Epoch: 1 << 60, Events: evs("c", 9, 9)}, // a wide varint
	}
	items, err := parseBatchProto(protoBody(t, reqs...))
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != len(reqs) {
		t.Fatalf("%d saves, want %d", len(items), len(reqs))
	}
	for i, it := range items {
		want := reqs[i]
		if it.chatID != want.ChatID || it.service != want.Service || it.epoch != want.Epoch || it.writer != want.Writer || it.ended != want.Ended {
			t.Errorf("save %d: %+v, want %+v", i, it, want)
		}
		got, err := unmarshalProtoEvents(it.events)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want.Events) {
			t.Fatalf("save %d: %d events, want %d", i, len(got), len(want.Events))
		}
		for k := range got {
			if !proto.Equal(got[k], want.Events[k]) {
				t.Errorf("save %d event %d: %v, want %v", i, k, got[k], want.Events[k])
			}
		}
	}
}

// TestHTTPBatchProtoErrors: a binary body that is not a batch is refused
// as a whole and changes nothing; a save in it that is invalid gets its own
// result, as in the JSON form.
func TestHTTPBatchProtoErrors(t *testing.T) {
	srv, _ := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db")) // max-body 64 KiB
	h := srv.Handler()
	before := dbDigest(t, srv)
	unknownTop := protowire.AppendTag(nil, 2, protowire.VarintType)
	unknownTop = protowire.AppendVarint(unknownTop, 1)
	unknownSave := protowire.AppendTag(nil, fieldBatchSaves, protowire.BytesType)
	unknownSave = protowire.AppendBytes(unknownSave, protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
	var many []SaveRequest
	for i := range MaxBatchSaves + 1 {
		many = append(many, SaveRequest{ChatID: fmt.Sprintf("m%d", i), Service: "chat", Epoch: 1})
	}
	var big []SaveRequest
	for i := range 10 { // 10 saves of 60 KiB: over 8 x max-body
		id := fmt.Sprintf("b%d", i)
		big = append(big, SaveRequest{ChatID: id, Service: "chat", Epoch: 1, Events: []*chatpb.Event{ev(id, 1, strings.Repeat("x", 60<<10))}})
	}
	for _, tc := range []struct {
		name string
		body []byte
		code int
		want string
	}{
		{"empty body", nil, 400, "at least one save"},
		{"truncated", protoBody(t, SaveRequest{ChatID: "c", Service: "chat", Epoch: 1, Events: evs("c", 1, 1)})[:10], 400, "batch body"},
		{"unknown batch field", unknownTop, 400, "unknown field 2"},
		{"unknown save field", unknownSave, 400, "unknown field 9"},
		{"too many saves", protoBody(t, many...), 400, "more than 1024"},
		{"body too large", protoBody(t, big...), 413, `"code":"too_large"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := postProto(t, h, tc.body)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %s, want %d with %q", code, body, tc.code, tc.want)
			}
		})
	}
	if dbDigest(t, srv) != before {
		t.Fatal("a refused batch changed the database")
	}

	// An event with a field chatpb.Event does not know: that save alone is invalid.
	odd, err := proto.Marshal(ev("u", 1, "x"))
	if err != nil {
		t.Fatal(err)
	}
	odd = protowire.AppendVarint(protowire.AppendTag(odd, 999, protowire.VarintType), 1)
	save := protowire.AppendString(protowire.AppendTag(nil, fieldSaveChatID, protowire.BytesType), "u")
	save = protowire.AppendString(protowire.AppendTag(save, fieldSaveService, protowire.BytesType), "chat")
	save = protowire.AppendVarint(protowire.AppendTag(save, fieldSaveEpoch, protowire.VarintType), 1)
	save = protowire.AppendBytes(protowire.AppendTag(save, fieldSaveEvents, protowire.BytesType), odd)
	body := protowire.AppendBytes(protowire.AppendTag(nil, fieldBatchSaves, protowire.BytesType), save)
	body = append(body, protoBody(t, SaveRequest{ChatID: "ok", Service: "chat", Epoch: 1, Events: evs("ok", 1, 2)})...)
	code, ans, raw := postProto(t, h, body)
	if code != 200 || len(ans.Results) != 2 {
		t.Fatalf("%d %s, want 200 with 2 results", code, raw)
	}
	if r := ans.Results[0]; r.Status != 400 || r.Error == nil || !strings.Contains(r.Error.Error, "unknown fields") {
		t.Errorf("save with an unknown event field: %+v", r)
	}
	if r := ans.Results[1]; r.Status != 200 || r.Saved != 2 {
		t.Errorf("valid save: %+v", r)
	}
}

// TestHTTPBatchFormsAgree: the same saves sent as JSON to one server and as
// binary to another get the same answers and store the same transcripts.
func TestHTTPBatchFormsAgree(t *testing.T) {
	jsrv, _ := newTestServer(t, filepath.Join(t.TempDir(), "json.db"))
	psrv, _ := newTestServer(t, filepath.Join(t.TempDir(), "proto.db"))
	rounds := [][]SaveRequest{
		{{ChatID: "a", Service: "chat", Epoch: 1, Events: evs("a", 1, 2)}, {ChatID: "b", Service: "chat", Epoch: 1, Events: evs("b", 1, 1)}},
		{{ChatID: "a", Service: "chat", Epoch: 1, Events: evs("a", 2, 4), Ended: true}, // a resend and new events
			{ChatID: "b", Service: "chat", Epoch: 1, Events: []*chatpb.Event{ev("b", 1, "changed")}}, // conflict
			{ChatID: "c", Service: "chat", Epoch: 0, Events: evs("c", 1, 1)}},                        // stale
	}
	for n, reqs := range rounds {
		for i := range reqs {
			reqs[i].Writer = "core-a" // as batchItemJSON writes
		}
		var items []string
		for _, r := range reqs {
			items = append(items, batchItemJSON(t, r.ChatID, r.Service, r.Epoch, r.Ended, r.Events...))
		}
		jcode, jans, jraw := postBatch(t, jsrv.Handler(), "", batchJSON(items...))
		pcode, pans, praw := postProto(t, psrv.Handler(), protoBody(t, reqs...))
		if jcode != 200 || pcode != 200 {
			t.Fatalf("round %d: json %d %s, binary %d %s", n, jcode, jraw, pcode, praw)
		}
		for i := range jans.Results {
			j, p := jans.Results[i], pans.Results[i]
			if j.ChatID != p.ChatID || j.Status != p.Status || j.Saved != p.Saved || j.Unchanged != p.Unchanged || j.HighestIndex != p.HighestIndex ||
				(j.Error == nil) != (p.Error == nil) || (j.Error != nil && j.Error.Code != p.Error.Code) {
				t.Errorf("round %d save %d: json %+v, binary %+v", n, i, j, p)
			}
		}
	}
	ctx := context.Background()
	for _, chat := range []string{"a", "b"} {
		jt, err1 := jsrv.store.transcript(ctx, chat)
		pt, err2 := psrv.store.transcript(ctx, chat)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if jt.Ended != pt.Ended || jt.Writer != pt.Writer || jt.Epoch != pt.Epoch || len(jt.Events) != len(pt.Events) {
			t.Fatalf("chat %s: json %+v, binary %+v", chat, jt, pt)
		}
		for i := range jt.Events {
			if !proto.Equal(jt.Events[i], pt.Events[i]) {
				t.Errorf("chat %s event %d: json %v, binary %v", chat, i, jt.Events[i], pt.Events[i])
			}
		}
	}
}

// TestClientSaveBatchFallsBackToJSON: against a ucs that knows only the
// JSON body (it refuses the binary one with 400, as one from before the
// binary form does), SaveBatch resends as JSON and sends every later batch
// as JSON at once.
func TestClientSaveBatchFallsBackToJSON(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var binary, plain atomic.Int64
	h := srv.Handler()
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isBatchProto(r) {
			binary.Add(1)
			writeError(w, http.StatusBadRequest, errorBody{Error: "malformed JSON", Code: codeInvalid})
			return
		}
		plain.Add(1)
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(old.Close)
	c := NewClient(old.URL, nil, nil)
	ctx := context.Background()
	for round := range uint64(3) {
		res, err := c.SaveBatch(ctx, []SaveRequest{{ChatID: "x", Service: "chat", Epoch: 1, Events: evs("x", round+1, round+1)}})
		if err != nil || res[0].Err != nil || res[0].Result.Saved != 1 {
			t.Fatalf("round %d: %+v %v", round, res, err)
		}
	}
	if binary.Load() != 1 || plain.Load() != 3 {
		t.Fatalf("%d binary and %d JSON requests, want 1 and 3", binary.Load(), plain.Load())
	}
	// A current server takes the binary body: no fallback.
	_, cur := newTestServer(t, filepath.Join(t.TempDir(), "cur.db"))
	if _, err := cur.SaveBatch(ctx, []SaveRequest{{ChatID: "y", Service: "chat", Epoch: 1, Events: evs("y", 1, 1)}}); err != nil {
		t.Fatal(err)
	}
	if cur.batchJSON.Load() {
		t.Fatal("the client fell back to JSON against a server that takes the binary body")
	}
}

// FuzzSaveBatchProto posts arbitrary bytes as a binary batch body: the
// server never panics, answers JSON with a known status and changes nothing
// unless it answers 200.
func FuzzSaveBatchProto(f *testing.F) {
	f.Add(protoBody(f, SaveRequest{ChatID: "f", Service: "chat", Epoch: 1, Events: evs("f", 1, 2)}))
	f.Add(protoBody(f, SaveRequest{ChatID: "f", Service: "chat", Epoch: 2, Events: evs("g", 1, 1)}, SaveRequest{ChatID: "", Service: "chat"}))
	f.Add([]byte{0x0a, 0x80})
	f.Add([]byte{0x0a, 0x02, 0x2a, 0x05})
	f.Add([]byte("\xff"))
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(f.TempDir(), "ucs.db")
	cfg.MaxBody = 1 << 10
	srv, err := New(cfg, discardTel())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	h := srv.Handler()
	known := map[int]bool{200: true, 400: true, 413: true}
	f.Fuzz(func(t *testing.T, body []byte) {
		before := dbDigest(t, srv)
		code, ans, raw := postProto(t, h, body)
		if !known[code] || !strings.HasPrefix(raw, "{") {
			t.Fatalf("status %d for %q: %s", code, body, raw)
		}
		if code != 200 {
			if dbDigest(t, srv) != before {
				t.Fatalf("status %d changed the database; body %q", code, body)
			}
			return
		}
		ok := false
		for _, r := range ans.Results {
			ok = ok || r.Status == 200
		}
		if !ok && dbDigest(t, srv) != before {
			t.Fatalf("no save succeeded but the database changed; body %q", body)
		}
	})
}

// TestHasUnknown: an event holding a field chatpb.Event does not know, at
// its top level or inside its participant, is found; a known event, every
// field set, is not, and checking it allocates nothing (a Range over its
// fields boxed each one, on every event of every save).
func TestHasUnknown(t *testing.T) {
	known := func() *chatpb.Event {
		e := ev("u", 1, "hello")
		e.ClientMessageId, e.Epoch, e.Visibility = "m1", 3, chatpb.Visibility_VISIBILITY_INTERNAL
		e.Attrs = map[string]string{"a": "b", "c": "d"}
		return e
	}
	withUnknown := func(in func(e *chatpb.Event) proto.Message) *chatpb.Event {
		e := known()
		m := in(e).ProtoReflect()
		m.SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
		return e
	}
	for _, tc := range []struct {
		name string
		ev   *chatpb.Event
		want bool
	}{
		{"known", known(), false},
		{"no participant", &chatpb.Event{SessionId: "u", Index: 1}, false},
		{"unknown at the top", withUnknown(func(e *chatpb.Event) proto.Message { return e }), true},
		{"unknown in the participant", withUnknown(func(e *chatpb.Event) proto.Message { return e.From }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasUnknown(tc.ev.ProtoReflect()); got != tc.want {
				t.Fatalf("hasUnknown = %v, want %v", got, tc.want)
			}
			if tc.want {
				return
			}
			if n := testing.AllocsPerRun(100, func() { hasUnknown(tc.ev.ProtoReflect()) }); n != 0 {
				t.Errorf("hasUnknown allocates %v times per event, want 0", n)
			}
		})
	}
}
