package ucsmock

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

const testToken = "tok"

func init() {
	testStores["http"] = func(t *testing.T) faultStore {
		_, c := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
		return c
	}
}

// newTestServer starts a server on a fresh database behind httptest and
// returns it with a client.
func newTestServer(t testing.TB, dbPath string) (*Server, *Client) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DBPath = dbPath
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

// eventJSON is the protojson of an event, as a save body holds it.
func eventJSON(t testing.TB, e *chatpb.Event) string {
	t.Helper()
	b, err := protojson.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func saveJSON(t testing.TB, service string, epoch uint64, ended bool, events ...*chatpb.Event) string {
	t.Helper()
	var parts []string
	for _, e := range events {
		parts = append(parts, eventJSON(t, e))
	}
	return fmt.Sprintf(`{"service":%q,"epoch":%d,"writer":"core-a","events":[%s],"ended":%v}`, service, epoch, strings.Join(parts, ","), ended)
}

type httpCase struct {
	name, method, path, token, body string
	wantStatus                      int
	wantBody                        string // substring of the answer
}

func runHTTPCases(t *testing.T, h http.Handler, cases []httpCase) {
	t.Helper()
	for _, tc := range cases {
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		req := httptest.NewRequest(tc.method, tc.path, body)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.wantStatus || !strings.Contains(rec.Body.String(), tc.wantBody) {
			t.Errorf("%s: %s %s = %d %s, want %d containing %q", tc.name, tc.method, tc.path, rec.Code, strings.TrimSpace(rec.Body.String()), tc.wantStatus, tc.wantBody)
		}
	}
}

func TestHTTPRoutes(t *testing.T) {
	srv, _ := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	h := srv.Handler()
	big := saveJSON(t, "chat", 1, false, ev("c1", 1, strings.Repeat("x", 70<<10)))
	cases := []httpCase{
		{"unknown transcript", "GET", "/ucs/v1/transcripts/c1", "", "", 404, `"code":"not_found"`},
		{"save", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 1, false, evs("c1", 1, 3)...), 200, `{"saved":3,"unchanged":0,"highestIndex":3}`},
		{"resave identical", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 1, false, evs("c1", 1, 3)...), 200, `{"saved":0,"unchanged":3,"highestIndex":3}`},
		{"conflicting content", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 1, false, ev("c1", 2, "other")), 409, `"code":"conflict"`},
		{"read json", "GET", "/ucs/v1/transcripts/c1", "", "", 200, `"chatId":"c1","service":"chat","ended":false`},
		{"read xml", "GET", "/ucs/v1/transcripts/c1?format=xml", "", "", 200, `<chatTranscript sessionId="c1"`},
		{"bad format", "GET", "/ucs/v1/transcripts/c1?format=csv", "", "", 400, "unknown format"},
		{"epoch", "GET", "/ucs/v1/epochs/chat", "", "", 200, `{"epoch":1,"holder":"core-a"`},
		{"unknown service epoch", "GET", "/ucs/v1/epochs/other", "", "", 200, `{"epoch":0,"holder":""}`},
		{"claim lost", "POST", "/ucs/v1/epochs/chat/claim", "", `{"expect":0,"epoch":2,"holder":"core-b"}`, 409, `{"error":"epoch claim conflict","code":"epoch_conflict","recoverable":false,"epoch":1,"holder":"core-a"}`},
		{"claim", "POST", "/ucs/v1/epochs/chat/claim", "", `{"expect":1,"epoch":2,"holder":"core-b"}`, 200, `{"epoch":2,"holder":"core-b"`},
		{"stale save", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 1, false, evs("c1", 4, 4)...), 409, `{"error":"stale epoch","code":"stale_epoch","recoverable":false,"epoch":2,"holder":"core-b"}`},
		{"end", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 2, true), 200, `"highestIndex":3`},
		{"read ended", "GET", "/ucs/v1/transcripts/c1", "", "", 200, `"ended":true`},
		{"chats", "GET", "/ucs/v1/chats?service=chat&ended=true", "", "", 200, `{"chats":[{"chatId":"c1","service":"chat","ended":true,"writer":"core-a","epoch":2,"highestIndex":3,`},
		{"chats bad ended", "GET", "/ucs/v1/chats?ended=maybe", "", "", 400, "ended must be"},
		{"healthz", "GET", "/healthz", "", "", 200, `"status":"ok"`},
		{"metrics", "GET", "/metrics", "", "", 200, `ucs_saves_total{result="ok"} 3`},
		{"wrong method", "DELETE", "/ucs/v1/transcripts/c1", "", "", 405, ""},

		// The bad-input matrix: each is 400 (413 for size) and changes nothing.
		{"missing chatId", "POST", "/ucs/v1/transcripts/", "", saveJSON(t, "chat", 2, false, evs("", 1, 1)...), 400, "missing chatId"},
		{"empty body", "POST", "/ucs/v1/transcripts/c2", "", "", 400, "empty body"},
		{"malformed json", "POST", "/ucs/v1/transcripts/c2", "", `{"service":`, 400, "malformed JSON"},
		{"trailing data", "POST", "/ucs/v1/transcripts/c2", "", saveJSON(t, "chat", 2, false) + "{}", 400, "trailing data"},
		{"unknown field", "POST", "/ucs/v1/transcripts/c2", "", `{"service":"chat","bogus":1}`, 400, "unknown field"},
		{"negative epoch", "POST", "/ucs/v1/transcripts/c2", "", `{"service":"chat","epoch":-1}`, 400, "malformed JSON"},
		{"missing service", "POST", "/ucs/v1/transcripts/c2", "", saveJSON(t, "", 2, false, evs("c2", 1, 1)...), 400, "missing service"},
		{"bad event", "POST", "/ucs/v1/transcripts/c2", "", `{"service":"chat","epoch":2,"events":[{"index":"x"}]}`, 400, "event 0"},
		{"null event", "POST", "/ucs/v1/transcripts/c2", "", `{"service":"chat","epoch":2,"events":[null]}`, 400, "event 0"},
		{"index 0", "POST", "/ucs/v1/transcripts/c2", "", saveJSON(t, "chat", 2, false, ev("c2", 0, "x")), 400, "index 0"},
		{"other session", "POST", "/ucs/v1/transcripts/c2", "", saveJSON(t, "chat", 2, false, ev("c3", 1, "x")), 400, "session_id"},
		{"too large", "POST", "/ucs/v1/transcripts/c2", "", big, 413, `"code":"too_large"`},
		{"claim bad json", "POST", "/ucs/v1/epochs/chat/claim", "", `{"expect":`, 400, "malformed JSON"},
		{"claim no holder", "POST", "/ucs/v1/epochs/chat/claim", "", `{"expect":2,"epoch":3}`, 400, "missing holder"},
		{"claim not newer", "POST", "/ucs/v1/epochs/chat/claim", "", `{"expect":2,"epoch":2,"holder":"x"}`, 400, "must be greater"},
		{"c2 untouched", "GET", "/ucs/v1/transcripts/c2", "", "", 404, ""},
		{"epoch untouched", "GET", "/ucs/v1/epochs/chat", "", "", 200, `{"epoch":2,"holder":"core-b"`},

		// Admin API.
		{"admin no token", "GET", "/ucs/v1/admin/faults", "", "", 401, "admin token"},
		{"admin wrong token", "GET", "/ucs/v1/admin/faults", "nope", "", 401, "admin token"},
		{"faults get", "GET", "/ucs/v1/admin/faults", testToken, "", 200, `{"latencyMs":0,"recoverableErrorRate":0,"nonRecoverable":false,"outage":false}`},
		{"faults bad rate", "PUT", "/ucs/v1/admin/faults", testToken, `{"recoverableErrorRate":2}`, 400, "out of range"},
		{"faults bad json", "PUT", "/ucs/v1/admin/faults", testToken, `{"outage":"yes"}`, 400, "malformed JSON"},
		{"faults put", "PUT", "/ucs/v1/admin/faults", testToken, `{"nonRecoverable":true}`, 200, `"nonRecoverable":true`},
		{"faults read back", "GET", "/ucs/v1/admin/faults", testToken, "", 200, `"nonRecoverable":true`},
		{"non-recoverable save", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 2, false, evs("c1", 4, 4)...), 422, `"recoverable":false`},
		{"non-recoverable claim", "POST", "/ucs/v1/epochs/chat/claim", "", `{"expect":2,"epoch":3,"holder":"x"}`, 422, `"code":"non_recoverable"`},
		{"reads unaffected", "GET", "/ucs/v1/transcripts/c1", "", "", 200, `"chatId":"c1"`},
		{"faults outage", "PUT", "/ucs/v1/admin/faults", testToken, `{"outage":true}`, 200, `"outage":true`},
		{"outage save", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 2, false, evs("c1", 4, 4)...), 503, `"code":"outage","recoverable":true`},
		{"outage read", "GET", "/ucs/v1/transcripts/c1", "", "", 503, `"recoverable":true`},
		{"outage epoch", "GET", "/ucs/v1/epochs/chat", "", "", 503, `"recoverable":true`},
		{"outage chats", "GET", "/ucs/v1/chats", "", "", 503, `"recoverable":true`},
		{"outage healthz", "GET", "/healthz", "", "", 200, `"outage":true`},
		{"faults recoverable", "PUT", "/ucs/v1/admin/faults", testToken, `{"recoverableErrorRate":1}`, 200, ""},
		{"recoverable save", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 2, false, evs("c1", 4, 4)...), 503, `"code":"unavailable","recoverable":true`},
		{"faults clear", "DELETE", "/ucs/v1/admin/faults", testToken, "", 200, `"outage":false`},
		{"save after clear", "POST", "/ucs/v1/transcripts/c1", "", saveJSON(t, "chat", 2, false, evs("c1", 4, 4)...), 200, `"highestIndex":4`},
		{"stats", "GET", "/ucs/v1/admin/stats", testToken, "", 200, `{"saves":4,"savedEvents":4,"rejectedStale":1,"conflicts":1,"faultsInjected":7,"claims":1,"claimsLost":1,"unauthorized":0}`},
	}
	runHTTPCases(t, h, cases)
}

func TestHTTPAdminDisabled(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	runHTTPCases(t, srv.Handler(), []httpCase{
		{"no token", "PUT", "/ucs/v1/admin/faults", "", `{"outage":true}`, 403, "admin API disabled"},
		{"any token", "PUT", "/ucs/v1/admin/faults", "x", `{"outage":true}`, 403, "admin API disabled"},
		{"empty bearer", "GET", "/ucs/v1/admin/stats", " ", "", 403, "admin API disabled"},
		{"saves work", "POST", "/ucs/v1/transcripts/c", "", saveJSON(t, "chat", 0, false, evs("c", 1, 1)...), 200, `"saved":1`},
	})
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	_, c := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	if _, err := c.Stats(ctx, "wrong"); !errors.Is(err, ErrForbidden) {
		t.Errorf("wrong token: %v", err)
	}
	if _, err := c.Transcript(ctx, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty chat id: %v", err)
	}
	// A chat id that needs escaping round-trips.
	id := "chat/with space?&#%"
	if _, err := c.Save(ctx, SaveRequest{ChatID: id, Service: "chat", Events: evs(id, 1, 2)}); err != nil {
		t.Fatalf("escaped id: %v", err)
	}
	tr, err := c.Transcript(ctx, id)
	if err != nil || tr.ChatID != id || len(tr.Events) != 2 {
		t.Fatalf("escaped id read back: %+v %v", tr, err)
	}
	// Network failure is recoverable.
	dead := NewClient("http://127.0.0.1:1", nil, telemetry.Discard())
	if _, err := dead.Save(ctx, SaveRequest{ChatID: "c", Service: "chat"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("connection refused: %v", err)
	}
	// A cancelled context is reported as such, not as unavailability.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Epoch(cctx, "chat"); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Errorf("cancelled: %v", err)
	}
	// A caller deadline cuts injected latency short.
	if err := c.SetFaults(ctx, testToken, Faults{LatencyMs: 5000}); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer dcancel()
	start := time.Now()
	if _, err := c.ClaimEpoch(dctx, "chat", 0, 1, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline during latency: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("deadline ignored: took %v", d)
	}
	if err := c.ClearFaults(ctx, testToken); err != nil {
		t.Fatal(err)
	}
	if e, err := c.Epoch(ctx, "chat"); err != nil || e.Epoch != 0 {
		t.Errorf("claim cut short by deadline changed the epoch: %+v %v", e, err)
	}
}

// xmlNode is a generic element, to check the XML transcript's structure.
type xmlNode struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Nodes   []xmlNode  `xml:",any"`
	Text    string     `xml:",chardata"`
}

func (n xmlNode) attr(name string) string {
	for _, a := range n.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func TestTranscriptXML(t *testing.T) {
	ctx := context.Background()
	_, c := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	cust := &chatpb.Participant{Id: "u1", Nickname: "Ann <&>", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}
	agent := &chatpb.Participant{Id: "a1", Nickname: "Bob", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT}
	sup := &chatpb.Participant{Id: "s1", Nickname: "Sue", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR}
	sys := &chatpb.Participant{Id: "sys", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}
	t0 := int64(1_790_000_000_000)
	mk := func(i uint64, kind chatpb.EventKind, from *chatpb.Participant, vis chatpb.Visibility, text string, attrs map[string]string) *chatpb.Event {
		return &chatpb.Event{SessionId: "x1", Index: i, Kind: kind, From: from, Visibility: vis, Text: text, UtcUnixMs: t0 + int64(i)*1500, Attrs: attrs}
	}
	K := chatpb.EventKind_EVENT_KIND_MESSAGE
	events := []*chatpb.Event{
		mk(1, chatpb.EventKind_EVENT_KIND_SESSION_STARTED, cust, 0, "", map[string]string{"subject": "billing"}),
		mk(2, chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, cust, 0, "", nil),
		mk(3, K, cust, 0, "hello & <welcome>", nil),
		mk(4, chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, agent, 0, "", nil),
		mk(5, chatpb.EventKind_EVENT_KIND_TYPING_STARTED, agent, 0, "", nil),
		mk(6, K, agent, 0, "hi \x00 there", nil), // invalid XML char must not break the document
		mk(7, chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, sup, chatpb.Visibility_VISIBILITY_MONITOR, "", nil),
		mk(8, K, sup, chatpb.Visibility_VISIBILITY_INTERNAL, "coach", nil),
		mk(9, chatpb.EventKind_EVENT_KIND_NOTICE, cust, 0, "custom", map[string]string{"noticeType": "x"}),
		mk(10, chatpb.EventKind_EVENT_KIND_PUSH_URL, agent, 0, "https://example.com/", nil),
		mk(11, chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED, cust, 0, "", nil),
		mk(12, chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, cust, 0, "", map[string]string{"reason": "closed"}),
		mk(14, chatpb.EventKind_EVENT_KIND_SESSION_ENDED, sys, 0, "", map[string]string{"reason": "agent closed"}),
	}
	if _, err := c.Save(ctx, SaveRequest{ChatID: "x1", Service: "chat", Epoch: 1, Events: events, Ended: true}); err != nil {
		t.Fatal(err)
	}
	b, err := c.TranscriptXML(ctx, "x1")
	if err != nil {
		t.Fatal(err)
	}
	// MemStore renders the same document.
	m := NewMemStore(1)
	if _, err := m.Save(ctx, SaveRequest{ChatID: "x1", Service: "chat", Epoch: 1, Events: events, Ended: true}); err != nil {
		t.Fatal(err)
	}
	if mb, err := m.TranscriptXML(ctx, "x1"); err != nil || !bytes.Equal(mb, b) {
		t.Errorf("MemStore XML differs (%v):\n%s", err, mb)
	}
	// Well-formed: the whole document decodes token by token.
	dec := xml.NewDecoder(bytes.NewReader(b))
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("malformed XML: %v\n%s", err, b)
		}
	}
	var root xmlNode
	if err := xml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	if root.XMLName.Local != "chatTranscript" || root.attr("sessionId") != "x1" || root.attr("startAt") != time.UnixMilli(t0+1500).UTC().Format(time.RFC3339) {
		t.Fatalf("root %v %v", root.XMLName, root.Attrs)
	}
	want := []struct{ elem, eventID, userID, vis, timeShift, detail string }{
		{"notice", "1", "u1", "ALL", "0", "SESSION_STARTED:billing"},
		{"newParty", "2", "u1", "ALL", "1", "CLIENT::Ann <&>"},
		{"message", "3", "u1", "ALL", "3", "hello & <welcome>"},
		{"newParty", "4", "a1", "ALL", "4", "AGENT:a1:Bob"},
		{"notice", "5", "a1", "ALL", "6", "TYPING_STARTED:"},
		{"message", "6", "a1", "ALL", "7", "hi \uFFFD there"},
		{"newParty", "7", "s1", "VIS", "9", "SUPERVISOR:s1:Sue"},
		{"message", "8", "s1", "INT", "10", "coach"},
		{"notice", "9", "u1", "ALL", "12", "USER_CUSTOM:custom"},
		{"notice", "10", "a1", "ALL", "13", "PUSH_URL:https://example.com/"},
		{"notice", "11", "u1", "ALL", "15", "PARTICIPANT_DISCONNECTED:"},
		{"partyLeft", "12", "u1", "ALL", "16", "closed"},
		{"notice", "14", "sys", "ALL", "19", "SESSION_ENDED:agent closed"},
	}
	if len(root.Nodes) != len(want) {
		t.Fatalf("%d elements, want %d:\n%s", len(root.Nodes), len(want), b)
	}
	for i, w := range want {
		n := root.Nodes[i]
		var detail string
		switch n.XMLName.Local {
		case "newParty":
			u := n.Nodes[0]
			detail = u.attr("userType") + ":" + u.attr("personId") + ":" + u.attr("userNick")
		case "message":
			detail = n.Nodes[0].Text
		case "partyLeft":
			detail = n.Nodes[0].Text
		case "notice":
			detail = n.Nodes[0].attr("noticeType") + ":" + n.Nodes[0].Text
		}
		got := []string{n.XMLName.Local, n.attr("eventId"), n.attr("userId"), n.attr("visibility"), n.attr("timeShift"), detail}
		if fmt.Sprint(got) != fmt.Sprint([]string{w.elem, w.eventID, w.userID, w.vis, w.timeShift, w.detail}) {
			t.Errorf("element %d = %q, want %+v", i, got, w)
		}
	}
}

// TestPersistence closes the server and opens a new one on the same file.
func TestPersistence(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "dir", "ucs.db")
	srv, c := newTestServer(t, path)
	if _, err := c.Save(ctx, SaveRequest{ChatID: "p", Service: "chat", Epoch: 3, Writer: "core-a", Events: evs("p", 1, 5), Ended: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClaimEpoch(ctx, "chat", 3, 4, "core-b"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Save(ctx, SaveRequest{ChatID: "p", Service: "chat", Epoch: 4, Events: evs("p", 6, 6)}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("save after close: %v", err)
	}
	_, c2 := newTestServer(t, path)
	checkReopened(t, c2)
}

// TestDurabilityWithoutClose copies the database file while the server is
// still running, right after the saves were acknowledged, and opens the copy:
// that is the file a kill -9 would leave behind (the copy sees exactly what
// reached the file, with no Close to flush anything). The real-process kill -9
// test belongs to e2e (e2e/harness already exists and is owned elsewhere).
func TestDurabilityWithoutClose(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, c := newTestServer(t, filepath.Join(dir, "ucs.db"))
	if _, err := c.Save(ctx, SaveRequest{ChatID: "p", Service: "chat", Epoch: 3, Writer: "core-a", Events: evs("p", 1, 5), Ended: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClaimEpoch(ctx, "chat", 3, 4, "core-b"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "ucs.db"))
	if err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(dir, "crashed.db")
	if err := os.WriteFile(crashed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, c2 := newTestServer(t, crashed)
	checkReopened(t, c2)
}

func checkReopened(t *testing.T, c *Client) {
	t.Helper()
	ctx := context.Background()
	tr, err := c.Transcript(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Ended || len(tr.Events) != 5 || tr.Events[4].GetText() != "message 5" || tr.Epoch != 3 {
		t.Fatalf("reopened transcript: %+v", tr)
	}
	if e, err := c.Epoch(ctx, "chat"); err != nil || (e.Epoch != 4 || e.Holder != "core-b") {
		t.Fatalf("reopened epoch: %+v %v", e, err)
	}
	// Fencing survives the restart.
	if _, err := c.Save(ctx, SaveRequest{ChatID: "p", Service: "chat", Epoch: 3, Events: evs("p", 6, 6)}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale save after reopen: %v", err)
	}
	// Idempotency survives it too.
	if res, err := c.Save(ctx, SaveRequest{ChatID: "p", Service: "chat", Epoch: 4, Events: evs("p", 1, 6)}); err != nil || res.Saved != 1 || res.Unchanged != 5 {
		t.Fatalf("resave after reopen: %+v %v", res, err)
	}
}

func TestNewBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, cfg := range []Config{
		{DBPath: filepath.Join(dir, "a.db"), MaxBody: 0},
		{DBPath: "", MaxBody: 1},
		{DBPath: filepath.Join(dir, "notadir", "x.db"), MaxBody: 1}, // parent is a file
	} {
		if cfg.DBPath != "" && strings.Contains(cfg.DBPath, "notadir") {
			os.WriteFile(filepath.Join(dir, "notadir"), []byte("x"), 0o600)
		}
		if s, err := New(cfg, telemetry.Discard()); err == nil {
			s.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestRun(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Addr() == "" {
		if time.Now().After(deadline) {
			t.Fatal("Run did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Get("http://" + srv.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if resp.StatusCode != 200 || h["status"] != "ok" {
		t.Fatalf("healthz %d %v", resp.StatusCode, h)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	// The database is closed: it can be opened again at once.
	srv2, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatalf("reopen after Run: %v", err)
	}
	srv2.Close()
}

func TestReadAfterClose(t *testing.T) {
	srv, c := newTestServer(t, filepath.Join(t.TempDir(), "ucs.db"))
	ctx := context.Background()
	if _, err := c.Save(ctx, SaveRequest{ChatID: "c", Service: "chat", Events: evs("c", 1, 1)}); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if _, err := c.Transcript(ctx, "c"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("read after close: %v", err)
	}
	if _, err := c.Epoch(ctx, "chat"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("epoch after close: %v", err)
	}
	runHTTPCases(t, srv.Handler(), []httpCase{{"healthz after close", "GET", "/healthz", "", "", 503, "closed"}})
}
