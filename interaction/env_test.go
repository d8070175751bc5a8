package interaction

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/interaction/auth"
	"github.com/hachat/hachat/telemetry"
)

const testToken = "svc-token"

// testAccounts are the built-in accounts of every test server (id → role);
// the password of id is testPassword(id).
var testAccounts = map[string]string{
	"a": "agent", "b": "agent", "c": "agent", "a1": "agent", "web1": "agent",
	"s": "supervisor", "sup1": "supervisor",
}

func testPassword(id string) string { return "pw-" + id + "-secret" }

// cheapHash keeps unit tests fast; production uses auth.DefaultHashParams.
var cheapHash = auth.HashParams{Memory: 64, Time: 1, Threads: 1}

// writeTestAccounts writes testAccounts to a fresh accounts file.
func writeTestAccounts(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "accounts.json")
	for id, role := range testAccounts {
		if err := auth.AddAccount(path, id, "", role, testPassword(id), cheapHash); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// env is one Interaction Server on a fake core, served on loopback.
type env struct {
	t    *testing.T
	core *fakeCore
	cc   chatpb.ChatClient // raw client to the fake core (the customer's side)
	srv  *Server
	url  string
	// client is the resilient client of newEnvClient(resilient), else nil.
	client *chatclient.Client
}

// newEnv serves an Interaction Server that reaches the fake core through a
// plain gRPC client, so the server's own resume loops are under test.
func newEnv(t *testing.T, mod func(*Config)) *env { return newEnvClient(t, false, nil, mod) }

// newEnvClient is newEnv; with resilient the server reaches the core through
// a chatclient.Client, as in production.
// tel, if not nil, is the telemetry of the server and the client.
func newEnvClient(t *testing.T, resilient bool, tel *telemetry.Telemetry, mod func(*Config)) *env {
	t.Helper()
	if tel == nil {
		tel = telemetry.Discard()
	}
	f := newFakeCore(testToken)
	dial := serveFake(t, f)
	raw := chatpb.NewChatClient(dialFake(t, dial))
	var cl chatpb.ChatClient = raw
	var resil *chatclient.Client
	if resilient {
		ccfg := chatclient.DefaultConfig()
		ccfg.Targets = []string{fakeTarget}
		ccfg.RetryFor = 300 * time.Millisecond
		c, err := chatclient.New(ccfg, tel, dial)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cl, resil = c, c
	}
	cfg := DefaultConfig()
	cfg.ServiceToken = testToken
	cfg.HTTP = "127.0.0.1:0"
	cfg.Accounts = writeTestAccounts(t)
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg, cl, tel)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	e := &env{t: t, core: f, cc: raw, srv: srv, url: "http://" + ln.Addr().String(), client: resil}
	e.waitFor("core watch up", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.coreUp
	})
	return e
}

// waitFor polls cond until it holds or 5 s pass.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// do calls the agent API and returns the status and the decoded JSON body.
func (e *env) do(method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		buf, _ := json.Marshal(b)
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	if out == nil {
		out = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, out
}

// mustDo is do that fails the test unless the status is 200.
func (e *env) mustDo(method, path, token string, body any) map[string]any {
	e.t.Helper()
	code, out := e.do(method, path, token, body)
	if code != http.StatusOK {
		e.t.Fatalf("%s %s: %d %v", method, path, code, out)
	}
	return out
}

// login logs id in with its password and checks that the account's role
// is role.
func (e *env) login(id, role string) string {
	e.t.Helper()
	out := e.mustDo("POST", "/agent/v1/login", "", map[string]string{"agentId": id, "nickname": "Nick " + id, "password": testPassword(id)})
	if got := out["agent"].(map[string]any)["role"]; got != role {
		e.t.Fatalf("login %s: role %v, want %s", id, got, role)
	}
	return out["token"].(string)
}

// customer starts a chat in the fake core as a customer.
func (e *env) customer(nick string) *chatpb.Auth {
	e.t.Helper()
	resp, err := e.cc.StartSession(context.Background(), &chatpb.StartSessionRequest{Service: "svc", Nickname: nick})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Auth
}

func (e *env) customerSay(auth *chatpb.Auth, text, id string) uint64 {
	e.t.Helper()
	resp, err := e.cc.Send(context.Background(), &chatpb.SendRequest{Auth: auth, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text, ClientMessageId: id})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Index
}

// pushEvent is one received Server-Sent Event.
type pushEvent struct {
	Event string
	Data  map[string]any
}

// push is an open push connection of one agent.
type push struct {
	t      *testing.T
	mu     sync.Mutex
	events []pushEvent
	closed bool
	cancel context.CancelFunc
}

func (e *env) openPush(token string) *push {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/agent/v1/events?token="+token, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		cancel()
		e.t.Fatalf("events: %d", resp.StatusCode)
	}
	p := &push{t: e.t, cancel: cancel}
	e.t.Cleanup(cancel)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ev pushEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.Event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.Data)
			case line == "" && ev.Event != "":
				p.mu.Lock()
				p.events = append(p.events, ev)
				p.mu.Unlock()
				ev = pushEvent{}
			}
		}
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
	}()
	return p
}

// wait returns the first event (from the start of the connection) that
// matches, failing after 5 s.
func (p *push) wait(what string, match func(pushEvent) bool) pushEvent {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		for _, ev := range p.events {
			if match(ev) {
				p.mu.Unlock()
				return ev
			}
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.t.Fatalf("push: timed out waiting for %s; got %d events: %v", what, len(p.events), p.events)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// count returns how many received events match.
func (p *push) count(match func(pushEvent) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, ev := range p.events {
		if match(ev) {
			n++
		}
	}
	return n
}

func isEvent(name string) func(pushEvent) bool {
	return func(ev pushEvent) bool { return ev.Event == name }
}

func chatEv(chat, kind, text string) func(pushEvent) bool {
	return func(ev pushEvent) bool {
		return ev.Event == evChat && ev.Data["chatId"] == chat && ev.Data["kind"] == kind && (text == "" || ev.Data["text"] == text)
	}
}

func offerFor(chat string) func(pushEvent) bool {
	return func(ev pushEvent) bool { return ev.Event == evOffer && ev.Data["chatId"] == chat }
}
