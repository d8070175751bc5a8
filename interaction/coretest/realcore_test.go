// Package coretest_test runs the Interaction Server against the real chat
// core (with an in-memory UCS), reached through chatclient as in
// production. It lives apart from package interaction so that the unit tests
// there build without chatcore.
package coretest_test

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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/interaction"
	"github.com/hachat/hachat/interaction/auth"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

const token = "svc-token"

type env struct {
	t   testing.TB
	cc  chatpb.ChatClient // the customer's side, straight to the core
	url string
}

func start(t *testing.T) *env { return startB(t) }

func startB(t testing.TB) *env {
	t.Helper()
	cfg := chatcore.DefaultConfig()
	cfg.Name = "core-test"
	cfg.GRPC, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.ServiceToken = token
	cfg.SendRate, cfg.SendBurst = 1e6, 1e6 // the benchmark sends as fast as it can
	core, err := chatcore.New(cfg, ucsmock.NewMemStore(1), telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- core.Serve(ctx, gl, hl) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	cc := chatclient.DefaultConfig()
	cc.Targets = []string{gl.Addr().String()}
	client, err := chatclient.New(cc, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	icfg := interaction.DefaultConfig()
	icfg.ServiceToken = token
	icfg.Accounts = filepath.Join(t.TempDir(), "accounts.json")
	for id, role := range map[string]string{"a": "agent", "b": "agent", "s": "supervisor"} {
		if err := auth.AddAccount(icfg.Accounts, id, "", role, "pw-"+id, auth.HashParams{Memory: 64, Time: 1, Threads: 1}); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := interaction.New(icfg, client, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		scancel()
		if err := <-sdone; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &env{t: t, cc: chatpb.NewChatClient(conn), url: "http://" + ln.Addr().String()}
}

func (e *env) do(method, path, tok string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (e *env) must(method, path, tok string, body any) map[string]any {
	e.t.Helper()
	code, out := e.do(method, path, tok, body)
	if code != 200 {
		e.t.Fatalf("%s %s: %d %v", method, path, code, out)
	}
	return out
}

// login logs id in with its password; the role comes from the account and
// must be role.
func (e *env) login(id, role string) string {
	out := e.must("POST", "/agent/v1/login", "", map[string]string{"agentId": id, "password": "pw-" + id})
	if got := out["agent"].(map[string]any)["role"]; got != role {
		e.t.Fatalf("login %s: role %v, want %s", id, got, role)
	}
	return out["token"].(string)
}

type event struct {
	name string
	data map[string]any
}

type push struct {
	t  testing.TB
	mu sync.Mutex
	ev []event
}

func (e *env) push(tok string) *push {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/agent/v1/events?token="+tok, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	p := &push{t: e.t}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var cur event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				cur.name = line[7:]
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(line[6:]), &cur.data)
			case line == "" && cur.name != "":
				p.mu.Lock()
				p.ev = append(p.ev, cur)
				p.mu.Unlock()
				cur = event{}
			}
		}
	}()
	return p
}

func (p *push) wait(what string, match func(event) bool) {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, ev := range p.ev {
			if match(ev) {
				p.mu.Unlock()
				return
			}
		}
		p.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	p.t.Fatalf("timed out waiting for %s", what)
}

func msg(chat, text string) func(event) bool {
	return func(ev event) bool {
		return ev.name == "chat" && ev.data["chatId"] == chat && ev.data["kind"] == "Message" && ev.data["text"] == text
	}
}

// TestRealCore runs the agent flow, monitoring and coaching on the real chat
// core: the customer's view holds the agent's reply and nothing of the
// supervisors.
func TestRealCore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real chat core")
	}
	e := start(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(e.url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "core=connected") {
			break // connected to an idle core, before any session exists
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz never said connected: %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ta := e.login("a", "agent")
	ts := e.login("s", "supervisor")
	pa, ps := e.push(ta), e.push(ts)
	e.must("POST", "/agent/v1/ready", ta, nil)

	ctx := context.Background()
	r, err := e.cc.StartSession(ctx, &chatpb.StartSessionRequest{Service: "svc", Nickname: "Olga", Subject: "late order"})
	if err != nil {
		t.Fatal(err)
	}
	cust, chat := r.Auth, r.Auth.SessionId
	say := func(text, id string) {
		if _, err := e.cc.Send(ctx, &chatpb.SendRequest{Auth: cust, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, Text: text, ClientMessageId: id}); err != nil {
			t.Fatal(err)
		}
	}
	say("my order is late", "c-1")
	pa.wait("offer", func(ev event) bool {
		return ev.name == "offer" && ev.data["chatId"] == chat && ev.data["customer"] == "Olga"
	})
	e.must("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	pa.wait("customer's message", msg(chat, "my order is late"))
	e.must("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "let me check", "clientMessageId": "a-1"})
	if out := e.must("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "let me check", "clientMessageId": "a-1"}); out["duplicate"] != true {
		t.Errorf("resend not marked duplicate: %v", out)
	}

	e.must("POST", "/agent/v1/chats/"+chat+"/monitor", ts, nil)
	ps.wait("monitor sees the transcript", msg(chat, "let me check"))
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "x"}); code != http.StatusConflict {
		t.Errorf("monitor send: %d, want 409", code)
	}
	e.must("POST", "/agent/v1/chats/"+chat+"/coach", ts, map[string]string{})
	e.must("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "psst: refund it"})
	pa.wait("agent sees coaching", func(ev event) bool { return msg(chat, "psst: refund it")(ev) && ev.data["visibility"] == "internal" })
	say("any news?", "c-2")
	ps.wait("supervisor sees the customer", msg(chat, "any news?"))
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": strings.Repeat("x", 5000)}); code != http.StatusBadRequest {
		t.Errorf("oversized message: %d, want 400", code)
	}

	resp, err := e.cc.Events(ctx, &chatpb.EventsRequest{Auth: cust, FromIndex: 1})
	if err != nil {
		t.Fatal(err)
	}
	var replies int
	for _, ev := range resp.Events {
		if ev.GetFrom().GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR || strings.Contains(ev.Text, "psst") {
			t.Errorf("customer sees a supervisor event: %v %q", ev.Kind, ev.Text)
		}
		if ev.Text == "let me check" {
			replies++
		}
	}
	if replies != 1 {
		t.Errorf("customer sees the reply %d times, want 1", replies)
	}

	e.must("POST", "/agent/v1/chats/"+chat+"/close", ta, nil)
	ps.wait("supervisor told the chat ended", func(ev event) bool { return ev.name == "chatRemoved" && ev.data["chatId"] == chat })
	st := e.must("GET", "/agent/v1/state", ta, nil)
	if n := len(st["chats"].([]any)); n != 0 {
		t.Errorf("agent still holds %d chats after close", n)
	}
	e.must("POST", "/agent/v1/logout", ta, nil)
}
