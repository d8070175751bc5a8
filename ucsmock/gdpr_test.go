package ucsmock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// gdprTestStore is a store with the GDPR admin methods (Client, MemStore).
type gdprTestStore interface {
	faultStore
	SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error)
	ExportChat(ctx context.Context, token, chatID string) (ChatExport, error)
	ExportCustomer(ctx context.Context, token string, c Customer) (CustomerExport, error)
	DeleteChat(ctx context.Context, token, chatID string) (DeleteResult, error)
	DeleteCustomer(ctx context.Context, token string, c Customer) (DeleteResult, error)
}

func forEachGDPRStore(t *testing.T, fn func(t *testing.T, s gdprTestStore)) {
	t.Helper()
	forEachStore(t, func(t *testing.T, s faultStore) { fn(t, s.(gdprTestStore)) })
}

// started is a chat's session-start event as chatcore writes it.
func started(chat, email string, userData map[string]string) *chatpb.Event {
	attrs := map[string]string{"service": "svc", "subject": "billing", "firstName": "Ann"}
	if email != "" {
		attrs["emailAddress"] = email
	}
	for k, v := range userData {
		attrs["userData."+k] = v
	}
	return &chatpb.Event{SessionId: chat, Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, Attrs: attrs, UtcUnixMs: 1_700_000_000_000}
}

// saveChat saves a chat of three events (start, two messages) at epoch.
func saveChat(t *testing.T, s Store, chat, email string, userData map[string]string, epoch uint64) {
	t.Helper()
	req := SaveRequest{ChatID: chat, Service: "svc", Epoch: epoch, Writer: "core-a",
		Events: append([]*chatpb.Event{started(chat, email, userData)}, evs(chat, 2, 3)...)}
	if _, err := s.Save(t.Context(), req); err != nil {
		t.Fatalf("save %s: %v", chat, err)
	}
}

func chatIDsOf(chats []ChatInfo) []string {
	var ids []string
	for _, c := range chats {
		ids = append(ids, c.ChatID)
	}
	return ids
}

// TestGDPRDeleteChatTombstone: a chat deleted by id is gone from every
// read, and no save after the delete, of an old, the current or a newer
// epoch, single or batched, brings any of it back.
func TestGDPRDeleteChatTombstone(t *testing.T) {
	forEachGDPRStore(t, func(t *testing.T, s gdprTestStore) {
		ctx := t.Context()
		saveChat(t, s, "c1", "ann@example.com", map[string]string{"CustomerId": "C-1"}, 1)
		if _, err := s.Save(ctx, SaveRequest{ChatID: "c1", Service: "svc", Epoch: 2, Writer: "core-b", Events: evs("c1", 4, 4)}); err != nil {
			t.Fatal(err)
		}
		saveChat(t, s, "c2", "bob@example.com", nil, 2)

		ex, err := s.ExportChat(ctx, testToken, "c1")
		if err != nil {
			t.Fatalf("export: %v", err)
		}
		if len(ex.Events) != 4 || ex.Customer.EmailAddress != "ann@example.com" || ex.Customer.UserData["CustomerId"] != "C-1" ||
			ex.Customer.Subject != "billing" || ex.Service != "svc" {
			t.Errorf("export = %+v", ex)
		}

		res, err := s.DeleteChat(ctx, testToken, "c1")
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
		if len(res.Deleted) != 1 || res.Deleted[0].ChatID != "c1" || res.Deleted[0].Events != 4 || res.Deleted[0].Epoch != 2 ||
			res.Deleted[0].Service != "svc" || res.Deleted[0].Scope != "chat" || res.Deleted[0].DeletedUnixMs == 0 {
			t.Errorf("delete = %+v", res)
		}
		gone := func(when string) {
			t.Helper()
			if _, err := s.Transcript(ctx, "c1"); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: transcript of the deleted chat: %v, want ErrNotFound", when, err)
			}
			if _, err := s.ExportChat(ctx, testToken, "c1"); !errors.Is(err, ErrDeleted) {
				t.Errorf("%s: export of the deleted chat: %v, want ErrDeleted", when, err)
			}
			chats, err := s.Chats(ctx, ChatFilter{})
			if err != nil || !slices.Equal(chatIDsOf(chats), []string{"c2"}) {
				t.Errorf("%s: chats = %v, %v; want only c2", when, chatIDsOf(chats), err)
			}
		}
		gone("after the delete")

		for _, tc := range []struct {
			name    string
			req     SaveRequest
			batch   bool
			wantErr error
		}{
			{"a resend from the old primary (old epoch)", SaveRequest{Epoch: 1, Writer: "core-a", Events: evs("c1", 2, 3)}, false, ErrStaleEpoch},
			{"a late save of the current epoch", SaveRequest{Epoch: 2, Writer: "core-b", Events: evs("c1", 4, 5)}, false, ErrDeleted},
			{"the whole transcript again (current epoch)", SaveRequest{Epoch: 2, Writer: "core-b",
				Events: append([]*chatpb.Event{started("c1", "ann@example.com", nil)}, evs("c1", 2, 4)...)}, false, ErrDeleted},
			{"a new primary restoring it (newer epoch)", SaveRequest{Epoch: 3, Writer: "core-c", Events: evs("c1", 2, 6)}, false, ErrDeleted},
			{"only the end", SaveRequest{Epoch: 2, Writer: "core-b", Ended: true}, false, ErrDeleted},
			{"batched, current epoch", SaveRequest{Epoch: 2, Writer: "core-b", Events: evs("c1", 5, 5)}, true, ErrDeleted},
			{"batched, old epoch", SaveRequest{Epoch: 1, Writer: "core-a", Events: evs("c1", 5, 5)}, true, ErrStaleEpoch},
		} {
			tc.req.ChatID, tc.req.Service = "c1", "svc"
			var err error
			if tc.batch {
				var rs []SaveBatchResult
				rs, err = s.SaveBatch(ctx, []SaveRequest{tc.req})
				if err == nil && len(rs) == 1 {
					err = rs[0].Err
				}
			} else {
				_, err = s.Save(ctx, tc.req)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.wantErr)
			}
			if errors.Is(err, ErrDeleted) && !errors.Is(err, ErrNonRecoverable) {
				t.Errorf("%s: %v does not match ErrNonRecoverable (a core would retry it)", tc.name, err)
			}
			gone("after " + tc.name)
		}
		// The refused newer-epoch save did not raise the service's epoch.
		if e, err := s.Epoch(ctx, "svc"); err != nil || e.Epoch != 2 {
			t.Errorf("epoch after refused saves = %+v, %v; want 2", e, err)
		}
		// Deleting again changes nothing and says so.
		again, err := s.DeleteChat(ctx, testToken, "c1")
		if err != nil || len(again.Deleted) != 0 || len(again.AlreadyDeleted) != 1 || again.AlreadyDeleted[0].DeletedUnixMs != res.Deleted[0].DeletedUnixMs {
			t.Errorf("delete again = %+v, %v", again, err)
		}
		// The other chat is untouched.
		if tr, err := s.Transcript(ctx, "c2"); err != nil || len(tr.Events) != 3 {
			t.Errorf("other chat: %v %v", tr, err)
		}
	})
}

// TestGDPRDeleteBeforeFirstSave: a chat deleted by id before UCS held any
// of it (UCS was down) is tombstoned; its first save, late, is refused.
func TestGDPRDeleteBeforeFirstSave(t *testing.T) {
	forEachGDPRStore(t, func(t *testing.T, s gdprTestStore) {
		ctx := t.Context()
		res, err := s.DeleteChat(ctx, testToken, "later")
		if err != nil || len(res.Deleted) != 1 || res.Deleted[0].Events != 0 || res.Deleted[0].Service != "" {
			t.Fatalf("delete = %+v, %v", res, err)
		}
		_, err = s.Save(ctx, SaveRequest{ChatID: "later", Service: "svc", Epoch: 1, Writer: "core-a", Events: evs("later", 1, 2)})
		if !errors.Is(err, ErrDeleted) {
			t.Errorf("first save after the delete: %v, want ErrDeleted", err)
		}
		if _, err := s.Transcript(ctx, "later"); !errors.Is(err, ErrNotFound) {
			t.Errorf("transcript: %v", err)
		}
	})
}

// TestGDPRCustomer: export and delete by email address (any case,
// surrounding spaces) and by a userData pair select exactly that
// customer's chats; a delete tombstones each.
func TestGDPRCustomer(t *testing.T) {
	forEachGDPRStore(t, func(t *testing.T, s gdprTestStore) {
		ctx := t.Context()
		saveChat(t, s, "a1", "Ann@Example.com", nil, 1)
		saveChat(t, s, "a2", " ann@example.com ", map[string]string{"CustomerId": "C-1"}, 1)
		saveChat(t, s, "b1", "bob@example.com", map[string]string{"CustomerId": "C-2"}, 1)
		saveChat(t, s, "u1", "", map[string]string{"CustomerId": "C-1"}, 1)
		saveChat(t, s, "x1", "ann@example.com.evil", map[string]string{"CustomerId": "C-10"}, 1)
		// A chat whose index 1 is not a session start matches nothing.
		if _, err := s.Save(ctx, SaveRequest{ChatID: "m1", Service: "svc", Epoch: 1, Events: evs("m1", 1, 1)}); err != nil {
			t.Fatal(err)
		}

		ids := func(ex CustomerExport) []string {
			var out []string
			for _, c := range ex.Chats {
				out = append(out, c.ChatID)
			}
			return out
		}
		for _, tc := range []struct {
			email, userData string
			want            []string
		}{
			{"ann@example.com", "", []string{"a1", "a2"}},
			{"ANN@EXAMPLE.COM", "", []string{"a1", "a2"}},
			{"", "CustomerId=C-1", []string{"a2", "u1"}},
			{"", "CustomerId=C-", nil},
			{"nobody@example.com", "", nil},
		} {
			c, err := ParseCustomer(tc.email, tc.userData)
			if err != nil {
				t.Fatal(err)
			}
			ex, err := s.ExportCustomer(ctx, testToken, c)
			if err != nil || !slices.Equal(ids(ex), tc.want) {
				t.Errorf("export %q%q = %v, %v; want %v", tc.email, tc.userData, ids(ex), err, tc.want)
			}
			for _, ce := range ex.Chats {
				if len(ce.Events) != 3 {
					t.Errorf("export of %s has %d events", ce.ChatID, len(ce.Events))
				}
			}
		}

		ann, _ := ParseCustomer("ann@example.com", "")
		res, err := s.DeleteCustomer(ctx, testToken, ann)
		if err != nil || len(res.Deleted) != 2 || res.Deleted[0].ChatID != "a1" || res.Deleted[1].ChatID != "a2" || res.Deleted[0].Scope != "customer" {
			t.Fatalf("delete customer = %+v, %v", res, err)
		}
		if ex, err := s.ExportCustomer(ctx, testToken, ann); err != nil || len(ex.Chats) != 0 {
			t.Errorf("export after delete = %+v, %v", ex, err)
		}
		for _, id := range []string{"a1", "a2"} {
			_, err := s.Save(ctx, SaveRequest{ChatID: id, Service: "svc", Epoch: 1, Writer: "core-a",
				Events: append([]*chatpb.Event{started(id, "ann@example.com", nil)}, evs(id, 2, 3)...)})
			if !errors.Is(err, ErrDeleted) {
				t.Errorf("resend of %s after the customer delete: %v", id, err)
			}
		}
		chats, err := s.Chats(ctx, ChatFilter{})
		if err != nil || !slices.Equal(chatIDsOf(chats), []string{"b1", "m1", "u1", "x1"}) {
			t.Errorf("chats left = %v, %v", chatIDsOf(chats), err)
		}
		// Deleting the customer again finds nothing.
		if res, err := s.DeleteCustomer(ctx, testToken, ann); err != nil || len(res.Deleted) != 0 {
			t.Errorf("second delete = %+v, %v", res, err)
		}
	})
}

// TestGDPRTombstoneSurvivesRestart: the tombstone is durable: after a
// restart of ucsmock the deleted chat's save is still refused.
func TestGDPRTombstoneSurvivesRestart(t *testing.T) {
	db := filepath.Join(t.TempDir(), "ucs.db")
	srv, c := newTestServer(t, db)
	saveChat(t, c, "c1", "ann@example.com", nil, 1)
	if _, err := c.DeleteChat(t.Context(), testToken, "c1"); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	_, c = newTestServer(t, db)
	_, err := c.Save(t.Context(), SaveRequest{ChatID: "c1", Service: "svc", Epoch: 1, Writer: "core-a", Events: evs("c1", 2, 3)})
	var de *DeletedError
	if !errors.As(err, &de) || de.Tombstone.ChatID != "c1" || de.Tombstone.Events != 3 {
		t.Errorf("save after restart: %v, want a *DeletedError for c1 with its tombstone", err)
	}
	if _, err := c.Transcript(t.Context(), "c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("transcript after restart: %v", err)
	}
}

// TestHTTPGDPRAccess: the GDPR routes need the admin token (not the reader
// or writer token), refuse bad selectors with 400, and a refused request
// changes nothing; the metric counts each outcome.
func TestHTTPGDPRAccess(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	cfg.AdminToken, cfg.WriterToken, cfg.ReaderToken = testToken, "writer-tok", "reader-tok"
	srv, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	c := NewClient(hs.URL, hs.Client(), telemetry.Discard()).WithToken("writer-tok")
	saveChat(t, c, "c1", "ann@example.com", nil, 1)

	const chat, cust = "/ucs/v1/admin/gdpr/chats/c1", "/ucs/v1/admin/gdpr/customers"
	runHTTPCases(t, srv.Handler(), []httpCase{
		{"no token", "DELETE", chat, "", "", 401, "unauthorized"},
		{"reader token", "DELETE", chat, "reader-tok", "", 401, "unauthorized"},
		{"writer token", "POST", cust + ":delete", "writer-tok", `{"email":"ann@example.com"}`, 401, "unauthorized"},
		{"reader token export", "GET", chat, "reader-tok", "", 401, "unauthorized"},
		{"no body", "POST", cust + ":delete", testToken, "", 400, "empty body"},
		{"no selector", "POST", cust + ":delete", testToken, `{}`, 400, "missing customer"},
		{"both selectors", "POST", cust + ":delete", testToken, `{"email":"a@b","userDataKey":"k","userDataValue":"v"}`, 400, "not both"},
		{"unknown member", "POST", cust + ":delete", testToken, `{"mail":"ann@example.com"}`, 400, "unknown field"},
		{"trailing data", "POST", cust + ":delete", testToken, `{"email":"ann@example.com"} {}`, 400, "trailing data"},
		{"not an email", "POST", cust + ":delete", testToken, `{"email":"ann"}`, 400, "not an address"},
		{"key without value", "POST", cust + ":delete", testToken, `{"userDataKey":"CustomerId"}`, 400, "empty value"},
		{"the selector in the query is not read", "POST", cust + ":export?email=ann@example.com", testToken, `{}`, 400, "missing customer"},
		{"control character", "DELETE", "/ucs/v1/admin/gdpr/chats/c%01", testToken, "", 400, "control character"},
		{"unknown chat", "GET", "/ucs/v1/admin/gdpr/chats/nope", testToken, "", 404, "not_found"},
		{"export", "GET", chat, testToken, "", 200, `"emailAddress":"ann@example.com"`},
		{"export customer", "POST", cust + ":export", testToken, `{"email":" ANN@example.com"}`, 200, `"chatId":"c1"`},
	})
	// Nothing was deleted by the refused requests.
	if tr, err := c.Transcript(t.Context(), "c1"); err != nil || len(tr.Events) != 3 {
		t.Fatalf("after refused deletes: %v %v", tr, err)
	}
	admin := NewClient(hs.URL, hs.Client(), telemetry.Discard())
	if _, err := admin.DeleteChat(t.Context(), "reader-tok", "c1"); !errors.Is(err, ErrForbidden) {
		t.Errorf("client delete with the reader token: %v", err)
	}
	if _, err := admin.DeleteChat(t.Context(), testToken, "c1"); err != nil {
		t.Fatal(err)
	}
	runHTTPCases(t, srv.Handler(), []httpCase{
		{"export deleted", "GET", chat, testToken, "", 410, `"code":"deleted"`},
		{"read deleted", "GET", "/ucs/v1/transcripts/c1", "reader-tok", "", 404, "not_found"},
		{"save deleted", "POST", "/ucs/v1/transcripts/c1", "writer-tok", saveJSON(t, "svc", 1, false, evs("c1", 2, 2)...), 410, `"tombstone":{"chatId":"c1"`},
	})
	res, err := http.Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		`ucs_gdpr_requests_total{op="delete",result="ok",scope="chat"} 1`,
		`ucs_gdpr_requests_total{op="delete",result="unauthorized",scope="chat"} 3`,
		`ucs_gdpr_requests_total{op="delete",result="invalid",scope="customer"} 7`,
		`ucs_gdpr_requests_total{op="export",result="ok",scope="customer"} 1`,
		`ucs_gdpr_requests_total{op="export",result="deleted",scope="chat"} 1`,
		`ucs_gdpr_chats_total{op="delete"} 1`,
		`ucs_gdpr_chats_total{op="export"} 2`,
		`ucs_saves_total{result="deleted"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestParseCustomer(t *testing.T) {
	long := strings.Repeat("a", 320)
	for _, tc := range []struct {
		email, userData string
		want            Customer
		bad             string
	}{
		{"ann@example.com", "", Customer{Email: "ann@example.com"}, ""},
		{"  Ann@Example.com ", "", Customer{Email: "Ann@Example.com"}, ""},
		{"", "CustomerId=C-1", Customer{Key: "CustomerId", Value: "C-1"}, ""},
		{"", "k=a=b", Customer{Key: "k", Value: "a=b"}, ""},
		{"", "", Customer{}, "missing customer"},
		{"a@b", "k=v", Customer{}, "not both"},
		{"ann", "", Customer{}, "not an address"},
		{"@example.com", "", Customer{}, "not an address"},
		{"ann@", "", Customer{}, "not an address"},
		{"a@b@c", "", Customer{}, "not an address"},
		{long + "@x", "", Customer{}, "longer than"},
		{"a\x00@b", "", Customer{}, "control character"},
		{"a\xff@b", "", Customer{}, "UTF-8"},
		{"", "k", Customer{}, "KEY=VALUE"},
		{"", "=v", Customer{}, "missing userData key"},
		{" ", "", Customer{}, "missing customer"},
		{"", "k=", Customer{}, "empty value"},
		{"", "k\n=v", Customer{}, "control character"},
	} {
		got, err := ParseCustomer(tc.email, tc.userData)
		switch {
		case tc.bad == "" && (err != nil || got != tc.want):
			t.Errorf("ParseCustomer(%q, %q) = %+v, %v; want %+v", tc.email, tc.userData, got, err, tc.want)
		case tc.bad != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("ParseCustomer(%q, %q) = %+v, %v; want an ErrInvalid with %q", tc.email, tc.userData, got, err, tc.bad)
		}
	}
}

// FuzzParseCustomer: never a panic; an accepted selector has exactly one
// of email and key, within the limits, and round-trips through the query
// the client sends.
func FuzzParseCustomer(f *testing.F) {
	for _, s := range [][2]string{{"ann@example.com", ""}, {"", "k=v"}, {"a@b", "k=v"}, {"", ""}, {"x", ""}, {"", "=="}, {" @ ", ""}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, email, userData string) {
		c, err := ParseCustomer(email, userData)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseCustomer(%q, %q): %v is not ErrInvalid", email, userData, err)
			}
			return
		}
		if (c.Email == "") == (c.Key == "") || len(c.Email) > maxEmailLen || len(c.Key) > maxNameLen || len(c.Value) > maxUserDataValueLen {
			t.Fatalf("ParseCustomer(%q, %q) = %+v", email, userData, c)
		}
		body, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := gdprCustomer(httptest.NewRecorder(), httptest.NewRequest("POST", "/x", bytes.NewReader(body)))
		if err != nil || back != c {
			t.Fatalf("round trip of %+v through %s: %+v, %v", c, body, back, err)
		}
	})
}

// TestOpenRefusesBadTombstone: a tombstone record that does not decode
// (or names another chat) makes the database corrupt at open, as a bad
// chat record does: a tombstone silently lost would let a deleted chat's
// late save bring it back.
func TestOpenRefusesBadTombstone(t *testing.T) {
	for name, value := range map[string]string{"not JSON": "{", "another chat": `{"chatId":"c2"}`} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ucs.db")
			if err := openTestDB(path); err != nil {
				t.Fatal(err)
			}
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketTombstones).Put([]byte("c1"), []byte(value)) })
			if cerr := db.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := openTestDB(path); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "tombstone") {
				t.Errorf("open: %v, want ErrCorrupt naming the tombstone", err)
			}
		})
	}
}

// FuzzGDPRCustomerBody: any body of a customer export or delete is either
// refused with ErrInvalid or a valid selector; never a panic.
func FuzzGDPRCustomerBody(f *testing.F) {
	for _, b := range []string{`{"email":"ann@example.com"}`, `{"userDataKey":"k","userDataValue":"v"}`, `{}`, ``, `{"email":1}`,
		`{"email":"a@b","userDataKey":"k"}`, `{"email":"a@b"} x`, `[]`, `{"userDataValue":"v"}`} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := gdprCustomer(httptest.NewRecorder(), httptest.NewRequest("POST", "/x", bytes.NewReader(body)))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("body %q: %v is not ErrInvalid", body, err)
			}
			return
		}
		if verr := c.Validate(); verr != nil || (c.Email == "") == (c.Key == "") {
			t.Fatalf("body %q accepted as %+v (%v)", body, c, verr)
		}
	})
}
