package ucsmock

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/hachat/hachat/telemetry"
)

const testWriterToken = "wtok"

// newWriterServer starts a server that requires testWriterToken on writes.
func newWriterServer(t testing.TB) (*Server, *httptest.Server) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	cfg.AdminToken = testToken
	cfg.WriterToken = testWriterToken
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	return srv, hs
}

// TestWriterToken: with --writer-token set, a save or claim without the
// token or with a wrong one gets 401 and changes nothing; with it, it works.
// With no reader token set, reads need the writer token.
func TestWriterToken(t *testing.T) {
	srv, _ := newWriterServer(t)
	h := srv.Handler()
	save := saveJSON(t, "chat", 1, false, evs("c1", 1, 2)...)
	claim := `{"expect":0,"epoch":1,"holder":"core-a"}`
	before := dbDigest(t, srv)
	for _, tok := range []string{"", "wrong", testToken, testWriterToken + "x", " " + testWriterToken} {
		runHTTPCases(t, h, []httpCase{
			{"save token " + tok, "POST", "/ucs/v1/transcripts/c1", tok, save, 401, `"code":"unauthorized"`},
			{"claim token " + tok, "POST", "/ucs/v1/epochs/chat/claim", tok, claim, 401, `"code":"unauthorized"`},
		})
	}
	if dbDigest(t, srv) != before {
		t.Fatal("refused writes changed the database")
	}
	if st := srv.Stats(); st.Saves != 0 || st.Claims != 0 || st.Unauthorized != 10 {
		t.Fatalf("stats after refused writes: %+v", st)
	}
	runHTTPCases(t, h, []httpCase{
		{"read without token", "GET", "/ucs/v1/epochs/chat", "", "", 401, `"code":"unauthorized"`},
		{"read with the writer token", "GET", "/ucs/v1/epochs/chat", testWriterToken, "", 200, `{"epoch":0,"holder":""}`},
		{"unknown chat read", "GET", "/ucs/v1/transcripts/c1", testWriterToken, "", 404, "not_found"},
		{"claim with token", "POST", "/ucs/v1/epochs/chat/claim", testWriterToken, claim, 200, `{"epoch":1,"holder":"core-a"`},
		{"save with token", "POST", "/ucs/v1/transcripts/c1", testWriterToken, save, 200, `"saved":2`},
		{"read back", "GET", "/ucs/v1/transcripts/c1", testWriterToken, "", 200, `"chatId":"c1"`},
	})
}

// TestClientWithToken: the Go client sends the writer token after
// WithToken; without it the server's 401 is ErrForbidden and nothing is stored.
func TestClientWithToken(t *testing.T) {
	ctx := context.Background()
	_, hs := newWriterServer(t)
	plain := NewClient(hs.URL, hs.Client(), nil)
	if _, err := plain.ClaimEpoch(ctx, "chat", 0, 1, "core-a"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("claim without token: %v", err)
	}
	if _, err := plain.Save(ctx, SaveRequest{ChatID: "c1", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("c1", 1, 1)}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("save without token: %v", err)
	}
	if _, err := plain.WithToken("wrong").Save(ctx, SaveRequest{ChatID: "c1", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("c1", 1, 1)}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("save with a wrong token: %v", err)
	}
	c := plain.WithToken(testWriterToken)
	if _, err := c.Transcript(ctx, "c1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused save stored something: %v", err)
	}
	if e, err := c.ClaimEpoch(ctx, "chat", 0, 1, "core-a"); err != nil || e.Epoch != 1 {
		t.Fatalf("claim with token: %v %v", e, err)
	}
	if _, err := c.Save(ctx, SaveRequest{ChatID: "c1", Service: "chat", Epoch: 1, Writer: "core-a", Events: evs("c1", 1, 1)}); err != nil {
		t.Fatalf("save with token: %v", err)
	}
	if tr, err := c.Transcript(ctx, "c1"); err != nil || len(tr.Events) != 1 {
		t.Fatalf("read with the writer token: %v %v", tr, err)
	}
	if _, err := plain.Transcript(ctx, "c1"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("read without a token: %v, want ErrForbidden", err)
	}
	if plain.token != "" {
		t.Fatal("WithToken changed the original client")
	}
}

// FuzzClaim posts arbitrary bytes as a claim body: the server never panics,
// answers JSON with a known status, and changes nothing unless it answers 200.
func FuzzClaim(f *testing.F) {
	for _, s := range []string{
		`{"expect":0,"epoch":1,"holder":"core-a"}`, `{"expect":1,"epoch":1,"holder":"core-a"}`,
		`{"expect":0,"epoch":2,"holder":""}`, `{"expect":-1,"epoch":2,"holder":"x"}`,
		`{"expect":0,"epoch":18446744073709551615,"holder":"x"}`, `{"expect":0,"epoch":1,"holder":"a","x":1}`,
		`{"expect":0,"epoch":1,"holder":"\u0000"}`, `{}{}`, `[]`, ``, "\xff",
	} {
		f.Add([]byte(s), "chat")
	}
	f.Add([]byte(`{"expect":0,"epoch":1,"holder":"a"}`), "")
	f.Add([]byte(`{"expect":0,"epoch":1,"holder":"a"}`), "a%2Fb")
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(f.TempDir(), "ucs.db")
	srv, err := New(cfg, discardTel())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	h := srv.Handler()
	known := map[int]bool{200: true, 301: true, 307: true, 400: true, 404: true, 405: true, 409: true, 413: true} // 301/307: the mux cleans paths such as epochs//claim
	f.Fuzz(func(t *testing.T, body []byte, service string) {
		before := dbDigest(t, srv)
		req, err := http.NewRequest(http.MethodPost, "http://ucs/ucs/v1/epochs/"+service+"/claim", bytes.NewReader(body))
		if err != nil {
			return // not a URL a client could send
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if !known[rec.Code] {
			t.Fatalf("status %d for %q on %q: %s", rec.Code, body, service, rec.Body)
		}
		if rec.Code != 200 && dbDigest(t, srv) != before {
			t.Fatalf("status %d changed the database; body %q", rec.Code, body)
		}
	})
}

// FuzzSetFaults puts arbitrary bytes as the faults body: the server never
// panics, answers 200 or 400, and changes the faults only on 200.
func FuzzSetFaults(f *testing.F) {
	for _, s := range []string{
		`{"latencyMs":10,"recoverableErrorRate":0.5,"nonRecoverable":true,"outage":false}`,
		`{"latencyMs":-1}`, `{"latencyMs":60001}`, `{"recoverableErrorRate":1.01}`, `{"recoverableErrorRate":-0.1}`,
		`{"recoverableErrorRate":NaN}`, `{"outage":1}`, `{"unknown":true}`, `{}`, `{}{}`, `null`, ``, "\x00",
	} {
		f.Add([]byte(s))
	}
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(f.TempDir(), "ucs.db")
	cfg.AdminToken = testToken
	srv, err := New(cfg, discardTel())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	h := srv.Handler()
	baseline := Faults{LatencyMs: 7, RecoverableErrorRate: 0.25}
	f.Fuzz(func(t *testing.T, body []byte) {
		if err := srv.faults.set(baseline); err != nil {
			t.Fatal(err)
		}
		before := srv.faults.get()
		req := httptest.NewRequest(http.MethodPut, "/ucs/v1/admin/faults", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		after := srv.faults.get()
		switch rec.Code {
		case 200:
			if after.LatencyMs < 0 || after.LatencyMs > 60000 || !(after.RecoverableErrorRate >= 0 && after.RecoverableErrorRate <= 1) {
				t.Fatalf("accepted out-of-range faults %+v from %q", after, body)
			}
		case 400, 413:
			if after != before {
				t.Fatalf("status %d changed the faults %+v -> %+v; body %q", rec.Code, before, after, body)
			}
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if !bytes.HasPrefix(rec.Body.Bytes(), []byte("{")) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
	})
}

// TestReaderToken: with --reader-token set, every read (transcript as JSON
// and XML, chat list, epoch) needs the reader token or the writer token; a
// missing or wrong one gets 401 and reveals nothing. The reader token
// cannot write. /healthz stays open.
func TestReaderToken(t *testing.T) {
	const readerToken = "rtok"
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	cfg.WriterToken = testWriterToken
	cfg.ReaderToken = readerToken
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	h := srv.Handler()
	save := saveJSON(t, "chat", 1, false, evs("c1", 1, 2)...)
	runHTTPCases(t, h, []httpCase{
		{"save", "POST", "/ucs/v1/transcripts/c1", testWriterToken, save, 200, `"saved":2`},
		{"reader token cannot save", "POST", "/ucs/v1/transcripts/c1", readerToken, save, 401, `"code":"unauthorized"`},
		{"reader token cannot claim", "POST", "/ucs/v1/epochs/chat/claim", readerToken, `{"expect":0,"epoch":1,"holder":"x"}`, 401, `"code":"unauthorized"`},
		{"health open", "GET", "/healthz", "", "", 200, `"status":"ok"`},
	})
	reads := []string{"/ucs/v1/transcripts/c1", "/ucs/v1/transcripts/c1?format=xml", "/ucs/v1/chats", "/ucs/v1/chats?service=chat",
		"/ucs/v1/epochs/chat", "/ucs/v1/transcripts/"}
	for _, path := range reads {
		for _, tok := range []string{"", "wrong", readerToken + "x", testToken, " " + readerToken} {
			runHTTPCases(t, h, []httpCase{{"read " + path + " token " + tok, "GET", path, tok, "", 401, `"code":"unauthorized"`}})
		}
	}
	for _, tok := range []string{readerToken, testWriterToken} {
		runHTTPCases(t, h, []httpCase{
			{"transcript", "GET", "/ucs/v1/transcripts/c1", tok, "", 200, `"chatId":"c1"`},
			{"xml", "GET", "/ucs/v1/transcripts/c1?format=xml", tok, "", 200, `<chatTranscript sessionId="c1"`},
			{"chats", "GET", "/ucs/v1/chats", tok, "", 200, `"chatId":"c1"`},
			{"epoch", "GET", "/ucs/v1/epochs/chat", tok, "", 200, `"epoch"`},
		})
	}
	// The Go client: WithToken(reader) reads, plain gets ErrForbidden.
	hs := httptest.NewServer(h)
	defer hs.Close()
	ctx := context.Background()
	plain := NewClient(hs.URL, hs.Client(), nil)
	if _, err := plain.Transcript(ctx, "c1"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("transcript without token: %v, want ErrForbidden", err)
	}
	if _, err := plain.Chats(ctx, ChatFilter{}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("chats without token: %v, want ErrForbidden", err)
	}
	if _, err := plain.Epoch(ctx, "chat"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("epoch without token: %v, want ErrForbidden", err)
	}
	rc := plain.WithToken(readerToken)
	if tr, err := rc.Transcript(ctx, "c1"); err != nil || len(tr.Events) != 2 {
		t.Fatalf("transcript with the reader token: %v %v", tr, err)
	}
	if x, err := rc.TranscriptXML(ctx, "c1"); err != nil || !bytes.Contains(x, []byte("chatTranscript")) {
		t.Fatalf("xml with the reader token: %s %v", x, err)
	}
	if cs, err := rc.Chats(ctx, ChatFilter{}); err != nil || len(cs) != 1 {
		t.Fatalf("chats with the reader token: %v %v", cs, err)
	}
	if _, err := rc.Save(ctx, SaveRequest{ChatID: "c2", Service: "chat", Epoch: 1, Writer: "x", Events: evs("c2", 1, 1)}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("save with the reader token: %v, want ErrForbidden", err)
	}
}

// TestReadsOpenWithoutTokens: with neither token set, reads need nothing
// (the development default; ucs warns at start).
func TestReadsOpenWithoutTokens(t *testing.T) {
	srv, _ := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	runHTTPCases(t, srv.Handler(), []httpCase{
		{"epoch", "GET", "/ucs/v1/epochs/chat", "", "", 200, `"epoch"`},
		{"chats", "GET", "/ucs/v1/chats", "", "", 200, `"chats"`},
	})
}
