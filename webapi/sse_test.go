package webapi

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct {
	id, name, data string
}

func (ev sseEvent) message(t *testing.T) message {
	t.Helper()
	var m message
	if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
		t.Fatalf("event data %q: %v", ev.data, err)
	}
	return m
}

// sseStream reads a push channel in the background.
type sseStream struct {
	t      *testing.T
	res    *http.Response
	events chan sseEvent
	done   chan struct{} // closed when the stream ends
	cancel context.CancelFunc
}

func (e *env) openEvents(c chat, query string, lastEventID string) *sseStream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	u := e.http.URL + "/genesys/2/chat/customer-support/" + c.id + "/events?userId=" + c.user + "&secureKey=" + c.key + query
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	res, err := e.http.Client().Do(req)
	if err != nil {
		cancel()
		e.t.Fatalf("open events: %v", err)
	}
	if res.StatusCode != 200 {
		cancel()
		res.Body.Close()
		e.t.Fatalf("open events: HTTP %d", res.StatusCode)
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		e.t.Errorf("content type %q", ct)
	}
	s := &sseStream{t: e.t, res: res, events: make(chan sseEvent, 256), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(res.Body)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.data != "" || cur.name != "" {
					s.events <- cur
				}
				cur = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.name = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			}
		}
	}()
	e.t.Cleanup(s.close)
	return s
}

func (s *sseStream) close() {
	s.cancel()
	s.res.Body.Close()
	<-s.done
}

// next returns the next event that is not a heartbeat, waiting up to 5s.
func (s *sseStream) next() sseEvent {
	s.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-s.events:
			if ev.name == sseHeartbeat {
				continue
			}
			return ev
		case <-s.done:
			select {
			case ev := <-s.events:
				if ev.name == sseHeartbeat {
					continue
				}
				return ev
			default:
			}
			s.t.Fatalf("stream ended while waiting for an event")
		case <-deadline:
			s.t.Fatalf("no event within 5s")
		}
	}
}

// expectMessage reads the next event and checks it is a transcript message.
func (s *sseStream) expectMessage(index uint64, typ string) message {
	s.t.Helper()
	ev := s.next()
	if ev.name != "" {
		s.t.Fatalf("got event %q (%s), want message %d %s", ev.name, ev.data, index, typ)
	}
	m := ev.message(s.t)
	if m.Index != index || m.Type != typ || ev.id != itoa(index) {
		s.t.Fatalf("got message id=%s %+v, want %d %s", ev.id, m, index, typ)
	}
	return m
}

func (s *sseStream) expectNamed(name string) {
	s.t.Helper()
	if ev := s.next(); ev.name != name {
		s.t.Fatalf("got event %q id=%s data=%s, want %q", ev.name, ev.id, ev.data, name)
	}
}

// expectEnd waits for the server to close the stream.
func (s *sseStream) expectEnd() {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.t.Fatal("stream still open")
	}
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestEventsStream(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	agent := e.core.addAgent(t, c.id, "Kim") // 3
	s := e.openEvents(c, "", "")
	s.expectMessage(2, "ParticipantJoined")
	if m := s.expectMessage(3, "ParticipantJoined"); m.From.Type != "Agent" || m.From.Nickname != "Kim" {
		t.Errorf("agent join = %+v", m)
	}
	if got := counterValue(t, gaugeAsCounter{e.srv.metrics.sseClients}); got != 1 {
		t.Errorf("sse clients = %v, want 1", got)
	}
	// Live events: the agent types and speaks, internal events stay hidden.
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_TYPING_STARTED, "", chatpb.Visibility_VISIBILITY_ALL)       // 4
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "coach me", chatpb.Visibility_VISIBILITY_INTERNAL) // 5
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "Hello Ada", chatpb.Visibility_VISIBILITY_ALL)     // 6
	s.expectMessage(4, "TypingStarted")
	if m := s.expectMessage(6, "Message"); m.Text != "Hello Ada" || m.UTCTime == 0 {
		t.Errorf("agent message = %+v", m)
	}
	// The customer's own send comes back with its clientMessageId.
	if code, r := e.op(c, "send", map[string]any{"message": "hi", "clientMessageId": "c-1"}); code != 200 || r.Index != 7 {
		t.Fatalf("send: %d %+v", code, r)
	}
	if m := s.expectMessage(7, "Message"); m.ClientMessageID != "c-1" || m.From.Type != "Client" {
		t.Errorf("own message = %+v", m)
	}
	// Ending the chat ends the stream.
	if code, _ := e.op(c, "disconnect", nil); code != 200 {
		t.Fatalf("disconnect: %d", code)
	}
	// The customer's own leave ends its stream (the core closes it there).
	s.expectMessage(8, "ParticipantLeft")
	s.expectNamed(sseEnded)
	s.expectEnd()
}

// gaugeAsCounter reads a gauge through counterValue.
type gaugeAsCounter struct {
	g interface{ Write(*dto.Metric) error }
}

func (g gaugeAsCounter) Write(m *dto.Metric) error {
	if err := g.g.Write(m); err != nil {
		return err
	}
	m.Counter = &dto.Counter{Value: m.Gauge.Value}
	return nil
}

func TestEventsResume(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	for _, m := range []string{"a", "b", "c"} { // 3, 4, 5
		e.op(c, "send", map[string]any{"message": m})
	}
	cases := []struct {
		name        string
		query       string
		lastEventID string
		first       uint64
	}{
		{"transcriptPosition", "&transcriptPosition=4", "", 4},
		{"Last-Event-ID wins over the position", "&transcriptPosition=1", "4", 5},
		{"Last-Event-ID", "", "2", 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := e.openEvents(c, tc.query, tc.lastEventID)
			for i := tc.first; i <= 5; i++ {
				s.expectMessage(i, "Message")
			}
			s.close()
		})
	}
}

func TestEventsSurviveCoreBreak(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	agent := e.core.addAgent(t, c.id, "Kim") // 3
	s := e.openEvents(c, "&transcriptPosition=3", "")
	s.expectMessage(3, "ParticipantJoined")
	waitFor(t, "subscription", func() bool {
		e.core.mu.Lock()
		defer e.core.mu.Unlock()
		return e.core.subscribes >= 1
	})
	// The core dies: every stream breaks and the next calls fail until the
	// standby takes over; meanwhile the new primary commits a message.
	e.core.setFailNext(2)
	e.core.breakStreams()
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "still here", chatpb.Visibility_VISIBILITY_ALL) // 4
	s.expectNamed(sseReconnecting)
	s.expectNamed(sseReconnected)
	if m := s.expectMessage(4, "Message"); m.Text != "still here" {
		t.Errorf("message = %+v", m)
	}
	// The resumed subscription carries on with live events, none repeated.
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "after", chatpb.Visibility_VISIBILITY_ALL) // 5
	s.expectMessage(5, "Message")
	if got := counterValue(t, e.srv.metrics.sseReconnects.WithLabelValues("reconnected")); got != 1 {
		t.Errorf("reconnected count = %v", got)
	}
	// A second break while idle: the same story again.
	e.core.breakStreams()
	s.expectNamed(sseReconnecting)
	s.expectNamed(sseReconnected)
	e.core.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "again", chatpb.Visibility_VISIBILITY_ALL) // 6
	s.expectMessage(6, "Message")
}

// TestEventsSurviveBreakThroughChatclient is the same failover with the
// resuming client in between: the stream never breaks for webapi, and the
// client's observer still lets the browser hear of the reconnect.
func TestEventsSurviveBreakThroughChatclient(t *testing.T) {
	tel := telemetry.Discard()
	f := newFakeCore()
	lis := serveFake(t, f)
	ccfg := chatclient.DefaultConfig()
	ccfg.Targets = []string{"passthrough:///fakecore"}
	client, err := chatclient.New(ccfg, tel, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	cfg := DefaultConfig()
	cfg.SSEHeartbeat = time.Hour
	srv, err := New(cfg, client, tel)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	e := &env{t: t, core: f, srv: srv, http: hs, tel: tel}
	c := e.start("Ada")
	agent := f.addAgent(t, c.id, "Kim") // 3
	s := e.openEvents(c, "&transcriptPosition=3", "")
	s.expectMessage(3, "ParticipantJoined")
	waitFor(t, "subscription", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.subscribes >= 1
	})
	f.breakStreams()
	f.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "still here", chatpb.Visibility_VISIBILITY_ALL) // 4
	s.expectNamed(sseReconnecting)
	s.expectNamed(sseReconnected)
	s.expectMessage(4, "Message")
	f.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "after", chatpb.Visibility_VISIBILITY_ALL) // 5
	s.expectMessage(5, "Message")

	// A promotion in progress: the client reaches a core that accepts the
	// stream and then refuses it, again and again. The browser hears of one
	// reconnect, not of each attempt, and it is told "reconnected" once the
	// stream stays up even with nothing to deliver.
	f.mu.Lock()
	f.refuseSubs = 30
	f.mu.Unlock()
	f.breakStreams()
	s.expectNamed(sseReconnecting)
	s.expectNamed(sseReconnected)
	f.mu.Lock()
	left := f.refuseSubs
	f.mu.Unlock()
	if left != 0 {
		t.Errorf("%d refusals left: the client did not go through them", left)
	}
	f.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "settled", chatpb.Visibility_VISIBILITY_ALL) // 6
	s.expectMessage(6, "Message")
	if got := counterValue(t, srv.metrics.sseReconnects.WithLabelValues("reconnecting")); got != 2 {
		t.Errorf("reconnecting told %v times, want 2", got)
	}

	// The same promotion on a loaded machine: each refusal comes later than
	// any settle time, and the read that would prove a primary is refused
	// too. No "reconnected" until a primary answers, then exactly one.
	backBefore := counterValue(t, srv.metrics.sseReconnects.WithLabelValues("reconnected"))
	f.mu.Lock()
	f.refuseSubs, f.slowRefuse, f.notPrimary = 3, 3*resumeSettle, true
	f.mu.Unlock()
	f.breakStreams()
	s.expectNamed(sseReconnecting)
	waitFor(t, "the slow refusals gone through", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.refuseSubs == 0
	})
	if got := counterValue(t, srv.metrics.sseReconnects.WithLabelValues("reconnected")); got != backBefore {
		t.Fatalf("told reconnected %v times while no primary answered", got-backBefore)
	}
	f.mu.Lock()
	f.notPrimary = false
	f.mu.Unlock()
	s.expectNamed(sseReconnected)
	f.agentEvent(t, c.id, agent, chatpb.EventKind_EVENT_KIND_MESSAGE, "proved", chatpb.Visibility_VISIBILITY_ALL) // 7
	s.expectMessage(7, "Message")
	if got := counterValue(t, srv.metrics.sseReconnects.WithLabelValues("reconnected")); got != backBefore+1 {
		t.Errorf("reconnected told %v times for one loss, want 1", got-backBefore)
	}
	if got := counterValue(t, srv.metrics.sseReconnects.WithLabelValues("reconnecting")); got != 3 {
		t.Errorf("reconnecting told %v times, want 3", got)
	}
}

func TestEventsChatVanishes(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	s := e.openEvents(c, "", "")
	s.expectMessage(2, "ParticipantJoined")
	waitFor(t, "subscription", func() bool {
		e.core.mu.Lock()
		defer e.core.mu.Unlock()
		return e.core.subscribes >= 1
	})
	// Restoration mode none: the new primary does not know the chat.
	e.core.mu.Lock()
	delete(e.core.sessions, c.id)
	e.core.mu.Unlock()
	e.core.breakStreams()
	s.expectNamed(sseReconnecting)
	ev := s.next()
	if ev.name != sseChatError || !strings.Contains(ev.data, `"code":104`) {
		t.Fatalf("got %q %s, want chat-error with code 104", ev.name, ev.data)
	}
	s.expectEnd()
}

func TestEventsHeartbeat(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SSEHeartbeat = 20 * time.Millisecond })
	c := e.start("Ada")
	s := e.openEvents(c, "", "")
	deadline := time.After(5 * time.Second)
	beats := 0
	for beats < 3 {
		select {
		case ev := <-s.events:
			if ev.name == sseHeartbeat {
				beats++
				if ev.id != "" {
					t.Errorf("heartbeat carries id %q", ev.id)
				}
			}
		case <-deadline:
			t.Fatalf("only %d heartbeats in 5s", beats)
		}
	}
}

func TestEventsOnEndedChat(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	e.op(c, "disconnect", nil) // 3 left, 4 ended
	s := e.openEvents(c, "&transcriptPosition=4", "")
	s.expectMessage(4, "ChatEnded")
	s.expectNamed(sseEnded)
	s.expectEnd()
}

func TestEventsRefused(t *testing.T) {
	e := newEnv(t, nil)
	c := e.start("Ada")
	base := e.http.URL + "/genesys/2/chat/customer-support/"
	cases := []struct {
		name, url, lastEventID string
		want                   int
	}{
		{"wrong secureKey", base + c.id + "/events?userId=" + c.user + "&secureKey=nope", "", 403},
		{"unknown chat", base + "nope/events?userId=" + c.user + "&secureKey=" + c.key, "", 404},
		{"no userId", base + c.id + "/events?secureKey=" + c.key, "", 400},
		{"bad Last-Event-ID", base + c.id + "/events?userId=" + c.user + "&secureKey=" + c.key, "x", 400},
		{"bad transcriptPosition", base + c.id + "/events?userId=" + c.user + "&secureKey=" + c.key + "&transcriptPosition=-3", "", 400},
		{"POST", "", "", 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method, u := http.MethodGet, tc.url
			if u == "" {
				method, u = http.MethodPost, base+c.id+"/events"
			}
			req, _ := http.NewRequest(method, u, nil)
			if tc.lastEventID != "" {
				req.Header.Set("Last-Event-ID", tc.lastEventID)
			}
			res, err := e.http.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var r response
			if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
				t.Fatalf("answer is not JSON: %v", err)
			}
			if res.StatusCode != tc.want || r.StatusCode != 2 || len(r.Errors) != 1 {
				t.Errorf("got %d %+v, want %d", res.StatusCode, r, tc.want)
			}
		})
	}
}

// waitFor polls cond until it holds or 5s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
