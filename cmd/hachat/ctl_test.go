package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// A switchover without a token says the token is missing, before asking
// any core; with the state file's token it goes on to the cores.
func TestCtlSwitchoverMissingAdminToken(t *testing.T) {
	dead, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := func(token string) string {
		p := filepath.Join(dir, token+"state.json")
		b := `{"parts":[{"name":"core-a","kind":"core","grpc":"` + dead + `"}],"credentials":{"adminToken":"` + token + `"}}`
		if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"--core, no token", []string{"ctl", "switchover", "--core", dead, "--timeout", "1s"}, "hachat ctl: missing admin token (--admin-token, or the demo's state file)"},
		{"state file without a token", []string{"ctl", "switchover", "--state", state(""), "--timeout", "1s"}, "missing admin token"},
		{"state file with a token", []string{"ctl", "switchover", "--state", state("tok"), "--timeout", "1s"}, "no primary reachable"},
		{"--admin-token", []string{"ctl", "switchover", "--core", dead, "--admin-token", "tok", "--timeout", "1s"}, "no primary reachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			if code := run(tc.args, &out, &errw); code != 1 {
				t.Fatalf("exit %d, want 1 (stderr %q)", code, errw.String())
			}
			if !strings.Contains(errw.String(), tc.want) {
				t.Fatalf("stderr %q lacks %q", errw.String(), tc.want)
			}
			if !strings.Contains(tc.want, "missing admin token") && strings.Contains(errw.String(), "missing admin token") {
				t.Fatalf("a token was given but ctl says it is missing: %q", errw.String())
			}
		})
	}
}

// ctl status shows a core whose process is gone as dead, with a short
// reason rather than a gRPC error.
func TestCtlStatusShowsDeadCore(t *testing.T) {
	dead, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	var out, errw bytes.Buffer
	if code := run([]string{"ctl", "status", "--core", dead, "--timeout", "2s"}, &out, &errw); code != 0 {
		t.Fatalf("exit %d (stderr %q)", code, errw.String())
	}
	table := out.String()
	if !strings.Contains(table, dead) || !strings.Contains(table, " dead ") || !strings.Contains(table, "connection refused") {
		t.Fatalf("table does not show %s as dead:\n%s", dead, table)
	}
	if strings.Contains(table, "rpc error") || strings.Contains(table, "code =") {
		t.Fatalf("table shows a raw gRPC error:\n%s", table)
	}
}

// ctl export and delete (GDPR) against a real ucsmock: found through
// --ucs or the state file, the admin token required, a deleted chat's
// later save refused.
func TestCtlExportDelete(t *testing.T) {
	cfg := ucsmock.DefaultConfig()
	cfg.DBPath = filepath.Join(t.TempDir(), "ucs.db")
	cfg.AdminToken = "adm"
	srv, err := ucsmock.New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	ucs := ucsmock.NewClient(hs.URL, hs.Client(), telemetry.Discard())
	for _, c := range []struct{ id, email string }{{"c1", "ann@example.com"}, {"c2", "Ann@Example.com"}, {"c3", "bob@example.com"}} {
		_, err := ucs.Save(t.Context(), ucsmock.SaveRequest{ChatID: c.id, Service: "svc", Epoch: 1, Writer: "core-a", Events: []*chatpb.Event{
			{SessionId: c.id, Index: 1, Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, Attrs: map[string]string{"emailAddress": c.email, "userData.CustomerId": "C-" + c.id}},
			{SessionId: c.id, Index: 2, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "hello from " + c.id},
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(t.TempDir(), "state.json")
	addr := strings.TrimPrefix(hs.URL, "http://")
	if err := os.WriteFile(state, []byte(`{"parts":[{"name":"ucs","kind":"ucs","http":"`+addr+`"}],"credentials":{"adminToken":"adm"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := func(args ...string) (int, string, string) {
		var out, errw bytes.Buffer
		code := run(append([]string{"ctl"}, args...), &out, &errw)
		return code, out.String(), errw.String()
	}

	// Refusals first: nothing changes.
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no token with --ucs", []string{"delete", "--ucs", hs.URL, "--chat", "c1"}, "missing admin token"},
		{"wrong token", []string{"delete", "--ucs", hs.URL, "--admin-token", "nope", "--chat", "c1"}, "access denied"},
		{"no selector", []string{"export", "--state", state}, "give one of --chat, --email and --user-data"},
		{"two selectors", []string{"delete", "--state", state, "--chat", "c1", "--email", "ann@example.com"}, "give one of"},
		{"bad email", []string{"delete", "--state", state, "--email", "ann"}, "not an address"},
		{"no ucs in the state file", []string{"export", "--state", filepath.Join(t.TempDir(), "none.json"), "--chat", "c1"}, "find ucs"},
	} {
		if code, _, errw := ctl(tc.args...); code != 1 || !strings.Contains(errw, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", tc.name, code, errw, tc.want)
		}
	}
	if tr, err := ucs.Transcript(t.Context(), "c1"); err != nil || len(tr.Events) != 2 {
		t.Fatalf("c1 after refused requests: %v %v", tr, err)
	}

	code, out, errw := ctl("export", "--state", state, "--email", "ann@example.com")
	var ex struct {
		Chats []struct {
			ChatID   string `json:"chatId"`
			Customer struct {
				EmailAddress string            `json:"emailAddress"`
				UserData     map[string]string `json:"userData"`
			} `json:"customer"`
			Events []map[string]any `json:"events"`
		} `json:"chats"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ex) != nil || len(ex.Chats) != 2 || ex.Chats[0].ChatID != "c1" || ex.Chats[1].ChatID != "c2" ||
		len(ex.Chats[0].Events) != 2 || ex.Chats[0].Customer.UserData["CustomerId"] != "C-c1" {
		t.Fatalf("export by email: exit %d, %s %s", code, out, errw)
	}
	if code, out, errw := ctl("export", "--ucs", hs.URL, "--admin-token", "adm", "--chat", "c3"); code != 0 || !strings.Contains(out, "hello from c3") {
		t.Errorf("export by chat: exit %d, %s %s", code, out, errw)
	}

	if code, out, errw := ctl("delete", "--state", state, "--user-data", "CustomerId=C-c1"); code != 0 || !strings.Contains(out, "deleted chat c1 (2 events") {
		t.Fatalf("delete by userData: exit %d, %q %q", code, out, errw)
	}
	if code, out, errw := ctl("delete", "--state", state, "--email", "ANN@example.com", "--json"); code != 0 || !strings.Contains(out, `"chatId":"c2"`) || strings.Contains(out, `"chatId":"c1"`) {
		t.Fatalf("delete by email: exit %d, %q %q", code, out, errw)
	}
	if code, out, _ := ctl("delete", "--state", state, "--chat", "c1"); code != 0 || !strings.Contains(out, "already deleted") {
		t.Errorf("delete again: exit %d, %q", code, out)
	}
	if code, _, errw := ctl("export", "--state", state, "--chat", "c1"); code != 1 || !strings.Contains(errw, "chat deleted") {
		t.Errorf("export of a deleted chat: exit %d, %q", code, errw)
	}
	_, err = ucs.Save(t.Context(), ucsmock.SaveRequest{ChatID: "c1", Service: "svc", Epoch: 1, Writer: "core-a",
		Events: []*chatpb.Event{{SessionId: "c1", Index: 3, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: "late"}}})
	if !errors.Is(err, ucsmock.ErrDeleted) {
		t.Errorf("late save after ctl delete: %v, want ErrDeleted", err)
	}
	if tr, err := ucs.Transcript(t.Context(), "c3"); err != nil || len(tr.Events) != 2 {
		t.Errorf("another customer's chat: %v %v", tr, err)
	}
}
