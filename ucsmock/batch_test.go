package ucsmock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// batchItemJSON is one save of a batch body.
func batchItemJSON(t testing.TB, chat, service string, epoch uint64, ended bool, events ...*chatpb.Event) string {
	t.Helper()
	body := saveJSON(t, service, epoch, ended, events...)
	return fmt.Sprintf(`{"chatId":%q,%s`, chat, body[1:])
}

func batchJSON(items ...string) string {
	return `{"saves":[` + strings.Join(items, ",") + `]}`
}

// postBatch posts body to the batch route and decodes a 200 answer.
func postBatch(t *testing.T, h http.Handler, token, body string) (int, batchAnswer, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/ucs/v1/transcripts:batch", strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
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

// TestHTTPBatchRequestErrors: a body that is not a batch is refused as a
// whole and changes nothing.
func TestHTTPBatchRequestErrors(t *testing.T) {
	srv, _ := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	h := srv.Handler()
	before := dbDigest(t, srv)
	var many []string
	for i := range MaxBatchSaves + 1 {
		many = append(many, batchItemJSON(t, fmt.Sprintf("m%d", i), "chat", 1, false))
	}
	huge := strings.Repeat("x", 60<<10)
	var big []string
	for i := range 10 { // 10 saves of 60 KiB each: over 8 x max-body (64 KiB)
		big = append(big, batchItemJSON(t, fmt.Sprintf("b%d", i), "chat", 1, false, ev(fmt.Sprintf("b%d", i), 1, huge)))
	}
	cases := []httpCase{
		{"empty body", "POST", "/ucs/v1/transcripts:batch", "", "", 400, "empty body"},
		{"malformed json", "POST", "/ucs/v1/transcripts:batch", "", `{"saves":[`, 400, "malformed JSON"},
		{"not an object", "POST", "/ucs/v1/transcripts:batch", "", `[]`, 400, "malformed JSON"},
		{"unknown field", "POST", "/ucs/v1/transcripts:batch", "", `{"saves":[],"bogus":1}`, 400, "unknown field"},
		{"unknown item field", "POST", "/ucs/v1/transcripts:batch", "", `{"saves":[{"chatId":"c","bogus":1}]}`, 400, "unknown field"},
		{"trailing data", "POST", "/ucs/v1/transcripts:batch", "", batchJSON(batchItemJSON(t, "c", "chat", 1, false)) + "{}", 400, "trailing data"},
		{"no saves", "POST", "/ucs/v1/transcripts:batch", "", `{"saves":[]}`, 400, "at least one save"},
		{"null saves", "POST", "/ucs/v1/transcripts:batch", "", `{"saves":null}`, 400, "at least one save"},
		{"too many saves", "POST", "/ucs/v1/transcripts:batch", "", batchJSON(many...), 400, "at most 1024"},
		{"body too large", "POST", "/ucs/v1/transcripts:batch", "", batchJSON(big...), 413, `"code":"too_large"`},
		{"wrong method", "GET", "/ucs/v1/transcripts:batch", "", "", 405, ""},
	}
	runHTTPCases(t, h, cases)
	if dbDigest(t, srv) != before {
		t.Fatal("a refused batch changed the database")
	}
}

// TestHTTPBatchMixed: one batch with results of every kind; each save gets
// exactly what it would have got alone, in request order, and only the good
// ones are stored. Fencing applies per save in order: a save that raises
// the epoch fences the later saves of the same batch.
func TestHTTPBatchMixed(t *testing.T) {
	srv, c := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	ctx := context.Background()
	if _, err := c.Save(ctx, SaveRequest{ChatID: "old", Service: "chat", Epoch: 2, Writer: "core-a", Events: evs("old", 1, 2)}); err != nil {
		t.Fatal(err)
	}
	body := batchJSON(
		batchItemJSON(t, "ok1", "chat", 2, false, evs("ok1", 1, 3)...),
		batchItemJSON(t, "stale", "chat", 1, false, evs("stale", 1, 1)...),
		batchItemJSON(t, "old", "chat", 2, false, ev("old", 2, "different")),
		batchItemJSON(t, "bad", "chat", 2, false, ev("other", 1, "x")),
		batchItemJSON(t, "", "chat", 2, false),
		batchItemJSON(t, "big", "chat", 2, false, ev("big", 1, strings.Repeat("y", 70<<10))),
		batchItemJSON(t, "old", "chat", 2, true, evs("old", 1, 3)...),
		batchItemJSON(t, "raise", "chat", 3, false, evs("raise", 1, 1)...),
		batchItemJSON(t, "fenced", "chat", 2, false, evs("fenced", 1, 1)...),
		batchItemJSON(t, "other-svc", "other", 1, false, evs("other-svc", 1, 1)...),
	)
	code, ans, raw := postBatch(t, srv.Handler(), "", body)
	if code != 200 {
		t.Fatalf("batch = %d %s", code, raw)
	}
	want := []struct {
		chat    string
		status  int
		code    string
		saved   int
		highest uint64
	}{
		{"ok1", 200, "", 3, 3},
		{"stale", 409, codeStaleEpoch, 0, 0},
		{"old", 409, codeConflict, 0, 0},
		{"bad", 400, codeInvalid, 0, 0},
		{"", 400, codeInvalid, 0, 0},
		{"big", 413, codeTooLarge, 0, 0},
		{"old", 200, "", 1, 3},
		{"raise", 200, "", 1, 1},
		{"fenced", 409, codeStaleEpoch, 0, 0},
		{"other-svc", 200, "", 1, 1},
	}
	if len(ans.Results) != len(want) {
		t.Fatalf("%d results, want %d: %s", len(ans.Results), len(want), raw)
	}
	for i, w := range want {
		r := ans.Results[i]
		got := ""
		if r.Error != nil {
			got = r.Error.Code
		}
		if r.ChatID != w.chat || r.Status != w.status || got != w.code || r.Saved != w.saved || r.HighestIndex != w.highest {
			t.Errorf("result %d = %+v (code %q), want %+v", i, r, got, w)
		}
	}
	if r := ans.Results[8]; r.Error == nil || r.Error.Epoch != 3 || r.Error.Holder != "core-a" {
		t.Errorf("fenced result carries %+v, want the current epoch 3", r.Error)
	}
	for _, chat := range []string{"stale", "bad", "big", "fenced"} {
		if _, err := c.Transcript(ctx, chat); !errors.Is(err, ErrNotFound) {
			t.Errorf("refused save of %s stored something: %v", chat, err)
		}
	}
	tr, err := c.Transcript(ctx, "old")
	if err != nil || len(tr.Events) != 3 || tr.Events[1].GetText() != "message 2" || !tr.Ended {
		t.Fatalf("old = %+v, %v; want 3 events, the original index 2, ended", tr, err)
	}
	if st := srv.Stats(); st.Saves != 5 || st.RejectedStale != 2 || st.Conflicts != 1 {
		t.Errorf("stats = %+v, want 5 saves (1 single + 4), 2 stale, 1 conflict", st)
	}
}

// TestHTTPBatchWriterToken: the batch route needs the writer token like a
// single save.
func TestHTTPBatchWriterToken(t *testing.T) {
	srv, _ := newWriterServer(t)
	body := batchJSON(batchItemJSON(t, "c1", "chat", 1, false, evs("c1", 1, 1)...))
	before := dbDigest(t, srv)
	for _, tok := range []string{"", "wrong"} {
		if code, _, raw := postBatch(t, srv.Handler(), tok, body); code != 401 || !strings.Contains(raw, codeUnauthorized) {
			t.Errorf("token %q: %d %s, want 401", tok, code, raw)
		}
	}
	if dbDigest(t, srv) != before {
		t.Fatal("an unauthorized batch changed the database")
	}
	if code, ans, raw := postBatch(t, srv.Handler(), testWriterToken, body); code != 200 || ans.Results[0].Status != 200 {
		t.Fatalf("with token: %d %s", code, raw)
	}
}

// TestStoreSaveBatch runs the batch semantics against MemStore and Client.
func TestStoreSaveBatch(t *testing.T) {
	forEachStore(t, func(t *testing.T, fs faultStore) {
		s, ok := fs.(BatchStore)
		if !ok {
			t.Fatalf("%T is not a BatchStore", fs)
		}
		ctx := context.Background()
		if _, err := s.Save(ctx, SaveRequest{ChatID: "old", Service: "chat", Epoch: 2, Writer: "core-a", Events: evs("old", 1, 2)}); err != nil {
			t.Fatal(err)
		}
		res, err := s.SaveBatch(ctx, []SaveRequest{
			{ChatID: "a", Service: "chat", Epoch: 2, Writer: "core-a", Events: evs("a", 1, 2)},
			{ChatID: "s", Service: "chat", Epoch: 1, Writer: "core-b", Events: evs("s", 1, 1)},
			{ChatID: "old", Service: "chat", Epoch: 2, Writer: "core-a", Events: []*chatpb.Event{ev("old", 1, "changed")}},
			{ChatID: "bad", Service: "chat", Epoch: 2, Events: []*chatpb.Event{ev("bad", 0, "x")}},
			{ChatID: "", Service: "chat", Epoch: 2},
			{ChatID: "old", Service: "chat", Epoch: 2, Writer: "core-a", Events: evs("old", 2, 3), Ended: true},
		})
		if err != nil {
			t.Fatal(err)
		}
		checks := []func(SaveBatchResult) bool{
			func(r SaveBatchResult) bool { return r.Err == nil && r.Result == SaveResult{Saved: 2, HighestIndex: 2} },
			func(r SaveBatchResult) bool {
				var se *StaleEpochError
				return errors.As(r.Err, &se) && se.Epoch == 2
			},
			func(r SaveBatchResult) bool { return errors.Is(r.Err, ErrConflict) },
			func(r SaveBatchResult) bool { return errors.Is(r.Err, ErrInvalid) },
			func(r SaveBatchResult) bool { return errors.Is(r.Err, ErrInvalid) },
			func(r SaveBatchResult) bool {
				return r.Err == nil && r.Result == SaveResult{Saved: 1, Unchanged: 1, HighestIndex: 3}
			},
		}
		if len(res) != len(checks) {
			t.Fatalf("%d results, want %d", len(res), len(checks))
		}
		for i, ok := range checks {
			if !ok(res[i]) {
				t.Errorf("result %d = %+v", i, res[i])
			}
		}
		if tr, err := s.Transcript(ctx, "old"); err != nil || len(tr.Events) != 3 || !tr.Ended || tr.Events[0].GetText() != "message 1" {
			t.Fatalf("old = %+v, %v", tr, err)
		}

		// Faults: the outage fails the batch; the non-recoverable error
		// and the recoverable rate apply per save.
		if err := fs.SetFaults(ctx, testToken, Faults{Outage: true}); err != nil {
			t.Fatal(err)
		}
		if res, err := s.SaveBatch(ctx, []SaveRequest{{ChatID: "o", Service: "chat", Epoch: 2}}); !errors.Is(err, ErrUnavailable) || res != nil {
			t.Fatalf("outage: %v, %v; want ErrUnavailable for the batch", res, err)
		}
		if err := fs.SetFaults(ctx, testToken, Faults{NonRecoverable: true}); err != nil {
			t.Fatal(err)
		}
		res, err = s.SaveBatch(ctx, []SaveRequest{{ChatID: "n1", Service: "chat", Epoch: 2}, {ChatID: "n2", Service: "chat", Epoch: 2}})
		if err != nil || len(res) != 2 || !errors.Is(res[0].Err, ErrNonRecoverable) || !errors.Is(res[1].Err, ErrNonRecoverable) {
			t.Fatalf("non-recoverable: %+v, %v", res, err)
		}
		if err := fs.SetFaults(ctx, testToken, Faults{RecoverableErrorRate: 0.5}); err != nil {
			t.Fatal(err)
		}
		var reqs []SaveRequest
		for i := range 200 {
			id := fmt.Sprintf("r%d", i)
			reqs = append(reqs, SaveRequest{ChatID: id, Service: "chat", Epoch: 2, Events: evs(id, 1, 1)})
		}
		res, err = s.SaveBatch(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		var okN, failN int
		for i, r := range res {
			switch {
			case r.Err == nil:
				okN++
			case errors.Is(r.Err, ErrUnavailable):
				failN++
				if _, err := s.Transcript(ctx, reqs[i].ChatID); !errors.Is(err, ErrNotFound) {
					t.Errorf("failed save %s stored: %v", reqs[i].ChatID, err)
				}
			default:
				t.Errorf("result %d: %v", i, r.Err)
			}
		}
		if okN < 50 || failN < 50 {
			t.Errorf("rate 0.5 per save: %d ok, %d failed; want both about 100", okN, failN)
		}
		if err := fs.ClearFaults(ctx, testToken); err != nil {
			t.Fatal(err)
		}
		if res, err := s.SaveBatch(ctx, nil); err != nil || len(res) != 0 {
			t.Fatalf("empty batch: %v, %v", res, err)
		}
	})
}

// TestClientSaveBatchSplits: a batch over the server's body limit is split
// by the client until it fits; a single save over max-body is that save's
// ErrInvalid.
func TestClientSaveBatchSplits(t *testing.T) {
	srv, c := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db")) // max-body 64 KiB, batch 512 KiB
	ctx := context.Background()
	var reqs []SaveRequest
	for i := range 20 { // 20 x 40 KiB
		id := fmt.Sprintf("c%d", i)
		reqs = append(reqs, SaveRequest{ChatID: id, Service: "chat", Epoch: 1, Events: []*chatpb.Event{ev(id, 1, strings.Repeat("z", 40<<10))}})
	}
	reqs = append(reqs, SaveRequest{ChatID: "huge", Service: "chat", Epoch: 1, Events: []*chatpb.Event{ev("huge", 1, strings.Repeat("z", 70<<10))}})
	res, err := c.SaveBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res[:20] {
		if r.Err != nil || r.Result.Saved != 1 {
			t.Errorf("save %d: %+v", i, r)
		}
	}
	if !errors.Is(res[20].Err, ErrInvalid) {
		t.Errorf("huge save: %v, want ErrInvalid", res[20].Err)
	}
	if st := srv.Stats(); st.Saves != 20 {
		t.Errorf("stats %+v, want 20 saves", st)
	}
}

// FuzzSaveBatch posts arbitrary bytes as a batch body: the server never
// panics, answers JSON with a known status, one result per save on 200,
// and changes nothing unless it answers 200.
func FuzzSaveBatch(f *testing.F) {
	f.Add([]byte(batchJSON(batchItemJSON(f, "f", "chat", 1, false, evs("f", 1, 2)...))))
	f.Add([]byte(batchJSON(batchItemJSON(f, "f", "chat", 1, false, ev("f", 1, "other")), batchItemJSON(f, "g", "chat", 0, true, ev("g", 1, "x")))))
	f.Add([]byte(batchJSON(batchItemJSON(f, "f", "chat", 2, false, ev("g", 1, "x")), batchItemJSON(f, "", "chat", 2, false))))
	f.Add([]byte(`{"saves":[{"chatId":"f","service":"chat","epoch":1,"events":[{"sessionId":"f","index":"7"}]},{"chatId":"f","service":"chat","epoch":1,"events":[{"sessionId":"f","index":"7","text":"x"}]}]}`))
	f.Add([]byte(`{"saves":[{"chatId":"\u0000"}]}`))
	f.Add([]byte(`{"saves":[null]}`))
	f.Add([]byte(`{"saves":[]}`))
	f.Add([]byte(`{"saves":{}}`))
	f.Add([]byte(`{"saves":[{"events":[null]}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
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
		req := httptest.NewRequest(http.MethodPost, "/ucs/v1/transcripts:batch", bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if !known[rec.Code] {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if !bytes.HasPrefix(rec.Body.Bytes(), []byte("{")) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
		if rec.Code != 200 {
			if dbDigest(t, srv) != before {
				t.Fatalf("status %d changed the database; body %q", rec.Code, body)
			}
			return
		}
		var in batchBody
		var ans batchAnswer
		if err := json.Unmarshal(body, &in); err != nil {
			t.Fatalf("200 for a body that does not decode: %v", err)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil || len(ans.Results) != len(in.Saves) {
			t.Fatalf("answer %q (%v): want %d results", rec.Body, err, len(in.Saves))
		}
		ok := false
		for _, r := range ans.Results {
			if (r.Status == 200) != (r.Error == nil) {
				t.Fatalf("result %+v: status and error disagree", r)
			}
			ok = ok || r.Status == 200
		}
		if !ok && dbDigest(t, srv) != before {
			t.Fatalf("no save succeeded but the database changed; body %q", body)
		}
	})
}
