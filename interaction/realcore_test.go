package interaction

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// newRealCoreEnv serves an Interaction Server on the real chat core (with an
// in-memory UCS), reached through chatclient as in production.
func newRealCoreEnv(t *testing.T) *env {
	t.Helper()
	cfg := chatcore.DefaultConfig()
	cfg.Name = "core-test"
	cfg.GRPC, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.ServiceToken = testToken
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
	t.Cleanup(func() {
		cancel()
		<-done
	})
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

	icfg := DefaultConfig()
	icfg.ServiceToken = testToken
	srv, err := New(icfg, client, telemetry.Discard())
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
	// The core sends a watch stream's headers with its first change only, so
	// the watch counts as connected once the first session is announced.
	return &env{t: t, cc: chatpb.NewChatClient(conn), srv: srv, url: "http://" + ln.Addr().String()}
}

// customerEvents reads the customer's view of the chat from the real core.
func (e *env) customerEvents(auth *chatpb.Auth) []*chatpb.Event {
	e.t.Helper()
	resp, err := e.cc.Events(context.Background(), &chatpb.EventsRequest{Auth: auth, FromIndex: 1})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Events
}

// TestRealCore runs the agent flow, coaching and monitoring on the real chat
// core: the customer's view must hold the agent's reply and nothing of the
// supervisors.
func TestRealCore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real chat core")
	}
	e := newRealCoreEnv(t)
	ta := e.login("a", "agent")
	ts := e.login("s", "supervisor")
	pa, ps := e.openPush(ta), e.openPush(ts)
	e.mustDo("POST", "/agent/v1/ready", ta, nil)

	cust := e.customer("Olga")
	chat := cust.SessionId
	e.customerSay(cust, "my order is late", "c-1")
	pa.wait("offer", offerFor(chat))
	e.mustDo("POST", "/agent/v1/offers/"+chat+"/accept", ta, nil)
	pa.wait("customer's message", chatEv(chat, "Message", "my order is late"))
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ta, map[string]string{"message": "let me check", "clientMessageId": "a-1"})

	e.mustDo("POST", "/agent/v1/chats/"+chat+"/monitor", ts, nil)
	ps.wait("monitor sees the transcript", chatEv(chat, "Message", "let me check"))
	if code, _ := e.do("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "x"}); code != http.StatusConflict {
		t.Errorf("monitor send: %d, want 409", code)
	}
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/coach", ts, map[string]string{})
	e.mustDo("POST", "/agent/v1/chats/"+chat+"/send", ts, map[string]string{"message": "psst: refund it"})
	pa.wait("agent sees coaching", func(ev pushEvent) bool {
		return chatEv(chat, "Message", "psst: refund it")(ev) && ev.Data["visibility"] == "internal"
	})
	e.customerSay(cust, "any news?", "c-2")
	ps.wait("supervisor sees the customer", chatEv(chat, "Message", "any news?"))

	var sawReply bool
	for _, ev := range e.customerEvents(cust) {
		if ev.GetFrom().GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR || strings.Contains(ev.Text, "psst") {
			t.Errorf("customer sees a supervisor event: %v %q", ev.Kind, ev.Text)
		}
		sawReply = sawReply || ev.Text == "let me check"
	}
	if !sawReply {
		t.Error("customer does not see the agent's reply")
	}

	e.mustDo("POST", "/agent/v1/chats/"+chat+"/close", ta, nil)
	ps.wait("supervisor told the chat ended", func(ev pushEvent) bool {
		return ev.Event == evChatRemoved && ev.Data["chatId"] == chat
	})
	e.waitFor("router forgets the chat", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		_, ok := e.srv.router.Chat(chat)
		return !ok
	})
}
