package webapi

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
)

// fakeCore is a minimal in-process chat core: sessions with a gap-free event
// log, secure keys, client message id idempotency, a message size limit, a
// per-participant send limit, visibility filtering for the customer, and
// fault hooks (fail the next calls with UNAVAILABLE, break every stream).
type fakeCore struct {
	chatpb.UnimplementedChatServer

	mu         sync.Mutex
	sessions   map[string]*fakeSession
	seq        int
	maxMessage int
	sendLimit  int           // sends per participant before RESOURCE_EXHAUSTED; 0: none
	failNext   int           // calls to answer UNAVAILABLE before serving again
	startIDs   []string      // client_request_id of every StartSession attempt
	failMsgs   int           // MESSAGE sends to answer UNAVAILABLE before serving again
	refuseSubs int           // Subscribes to accept (headers sent) and then refuse as a backup does
	slowRefuse time.Duration // how long such a Subscribe stays up before it refuses (a loaded backup)
	notPrimary bool          // Events answers UNAVAILABLE (not primary), as a backup does
	breakCh    chan struct{}
	lastMD     metadata.MD
	lastStart  *chatpb.StartSessionRequest
	subscribes int
	sendCalls  int // Send attempts, failed ones included
}

type fakePart struct {
	p   *chatpb.Participant
	key string
}

type fakeSession struct {
	id      string
	events  []*chatpb.Event
	parts   map[string]*fakePart
	cmids   map[string]uint64
	sends   map[string]int
	ended   bool
	changed chan struct{}
}

func newFakeCore() *fakeCore {
	return &fakeCore{sessions: map[string]*fakeSession{}, maxMessage: 4096, breakCh: make(chan struct{})}
}

// appendLocked adds an event to a session and wakes subscribers.
func (f *fakeCore) appendLocked(s *fakeSession, ev *chatpb.Event) uint64 {
	ev.SessionId = s.id
	ev.Index = uint64(len(s.events) + 1)
	ev.UtcUnixMs = time.Now().UnixMilli()
	s.events = append(s.events, ev)
	if ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED {
		s.ended = true
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return ev.Index
}

// enter records metadata and applies an injected UNAVAILABLE fault.
func (f *fakeCore) enter(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		f.lastMD = md
	}
	if f.failNext > 0 {
		f.failNext--
		return status.Error(codes.Unavailable, "injected: not primary")
	}
	return nil
}

func (f *fakeCore) StartSession(ctx context.Context, req *chatpb.StartSessionRequest) (*chatpb.JoinResponse, error) {
	f.mu.Lock()
	f.startIDs = append(f.startIDs, req.GetClientRequestId())
	f.mu.Unlock()
	if err := f.enter(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastStart = req
	f.seq++
	s := &fakeSession{id: fmt.Sprintf("chat-%d", f.seq), parts: map[string]*fakePart{}, cmids: map[string]uint64{}, sends: map[string]int{}, changed: make(chan struct{})}
	f.sessions[s.id] = s
	cust := &chatpb.Participant{Id: "cust-" + s.id, Nickname: req.Nickname, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}
	s.parts[cust.Id] = &fakePart{p: cust, key: "key-" + s.id}
	sys := &chatpb.Participant{Id: "system", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}
	f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, From: sys, Attrs: map[string]string{"subject": req.Subject}})
	f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: cust})
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: cust.Id, SecureKey: "key-" + s.id}, Alias: "fake-core", NextIndex: uint64(len(s.events) + 1)}, nil
}

// authLocked checks an Auth.
func (f *fakeCore) authLocked(a *chatpb.Auth) (*fakeSession, *fakePart, error) {
	s, ok := f.sessions[a.GetSessionId()]
	if !ok {
		return nil, nil, status.Error(codes.NotFound, "no such session")
	}
	p, ok := s.parts[a.GetParticipantId()]
	if !ok || p.key != a.GetSecureKey() {
		return nil, nil, status.Error(codes.PermissionDenied, "bad secure key")
	}
	return s, p, nil
}

func (f *fakeCore) Send(ctx context.Context, req *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	f.mu.Lock()
	f.sendCalls++
	f.mu.Unlock()
	if err := f.enter(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s, p, err := f.authLocked(req.GetAuth())
	if err != nil {
		return nil, err
	}
	if s.ended {
		return nil, status.Error(codes.FailedPrecondition, "session ended")
	}
	if f.failMsgs > 0 && req.GetKind() == chatpb.EventKind_EVENT_KIND_MESSAGE {
		f.failMsgs--
		return nil, status.Error(codes.Unavailable, "injected: failing over")
	}
	if len(req.GetText()) > f.maxMessage {
		return nil, status.Errorf(codes.InvalidArgument, "message longer than %d bytes", f.maxMessage)
	}
	key := p.p.Id + "/" + req.GetClientMessageId()
	if idx, ok := s.cmids[key]; ok && req.GetClientMessageId() != "" {
		return &chatpb.SendResponse{Index: idx, Duplicate: true, Alias: "fake-core"}, nil
	}
	if f.sendLimit > 0 && s.sends[p.p.Id] >= f.sendLimit {
		return nil, status.Error(codes.ResourceExhausted, "too many sends per second")
	}
	s.sends[p.p.Id]++
	idx := f.appendLocked(s, &chatpb.Event{Kind: req.GetKind(), From: p.p, Text: req.GetText(), ClientMessageId: req.GetClientMessageId(), Attrs: req.GetAttrs(), Visibility: req.GetVisibility()})
	if req.GetClientMessageId() != "" {
		s.cmids[key] = idx
	}
	return &chatpb.SendResponse{Index: idx, Alias: "fake-core"}, nil
}

func (f *fakeCore) Leave(ctx context.Context, req *chatpb.LeaveRequest) (*chatpb.LeaveResponse, error) {
	if err := f.enter(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s, p, err := f.authLocked(req.GetAuth())
	if err != nil {
		return nil, err
	}
	if s.ended {
		return nil, status.Error(codes.FailedPrecondition, "session ended")
	}
	f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, From: p.p})
	idx := f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED, From: &chatpb.Participant{Id: "system", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}, Attrs: map[string]string{"reason": "customer left"}})
	return &chatpb.LeaveResponse{Index: idx, Alias: "fake-core"}, nil
}

// visibleLocked returns the events from index from that a participant may see.
func visibleLocked(s *fakeSession, p *fakePart, from uint64) []*chatpb.Event {
	var out []*chatpb.Event
	if from == 0 {
		from = 1
	}
	for i := from; i <= uint64(len(s.events)); i++ {
		ev := s.events[i-1]
		if p.p.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER && ev.Visibility != chatpb.Visibility_VISIBILITY_ALL {
			continue
		}
		out = append(out, ev)
	}
	return out
}

func (f *fakeCore) Events(ctx context.Context, req *chatpb.EventsRequest) (*chatpb.EventsResponse, error) {
	if err := f.enter(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notPrimary {
		return nil, status.Error(codes.Unavailable, "injected: this chat core is not primary")
	}
	s, p, err := f.authLocked(req.GetAuth())
	if err != nil {
		return nil, err
	}
	return &chatpb.EventsResponse{Events: visibleLocked(s, p, req.GetFromIndex()), NextIndex: uint64(len(s.events) + 1), Ended: s.ended, Alias: "fake-core"}, nil
}

func (f *fakeCore) Subscribe(req *chatpb.SubscribeRequest, stream grpc.ServerStreamingServer[chatpb.Event]) error {
	if err := f.enter(stream.Context()); err != nil {
		return err
	}
	f.mu.Lock()
	f.subscribes++
	brk := f.breakCh
	refuse := f.refuseSubs > 0
	if refuse {
		f.refuseSubs--
	}
	f.mu.Unlock()
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	if refuse {
		f.mu.Lock()
		slow := f.slowRefuse
		f.mu.Unlock()
		if slow > 0 {
			t := time.NewTimer(slow)
			defer t.Stop()
			select {
			case <-t.C:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		return status.Error(codes.Unavailable, "injected: this chat core is not primary")
	}
	next := req.GetFromIndex()
	if next == 0 {
		next = 1
	}
	for {
		// A break wins over events committed after it (a select with both
		// ready picks either), as a dead core sends nothing more.
		select {
		case <-brk:
			return status.Error(codes.Unavailable, "injected: core went away")
		default:
		}
		f.mu.Lock()
		s, p, err := f.authLocked(req.GetAuth())
		if err != nil {
			f.mu.Unlock()
			return err
		}
		evs := visibleLocked(s, p, next)
		next = uint64(len(s.events) + 1)
		ended, changed := s.ended, s.changed
		f.mu.Unlock()
		for _, ev := range evs {
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
		if ended {
			return nil
		}
		select {
		case <-changed:
		case <-brk:
			return status.Error(codes.Unavailable, "injected: core went away")
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// breakStreams ends every open Subscribe with UNAVAILABLE, as a dying core does.
func (f *fakeCore) breakStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.breakCh)
	f.breakCh = make(chan struct{})
}

// setFailNext makes the next n calls answer UNAVAILABLE.
func (f *fakeCore) setFailNext(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = n
}

// addAgent joins an agent to a session and returns its participant id.
func (f *fakeCore) addAgent(t *testing.T, chatID, nick string) string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[chatID]
	if s == nil {
		t.Fatalf("no session %s", chatID)
	}
	p := &chatpb.Participant{Id: "agent-" + nick, Nickname: nick, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT}
	s.parts[p.Id] = &fakePart{p: p, key: "agent-key"}
	f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: p})
	return p.Id
}

// agentEvent appends an event from a session participant directly.
func (f *fakeCore) agentEvent(t *testing.T, chatID, pid string, kind chatpb.EventKind, text string, vis chatpb.Visibility) uint64 {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[chatID]
	if s == nil || s.parts[pid] == nil {
		t.Fatalf("no session %s or participant %s", chatID, pid)
	}
	return f.appendLocked(s, &chatpb.Event{Kind: kind, From: s.parts[pid].p, Text: text, Visibility: vis})
}

// eventCount returns how many events a session holds (0 for none).
func (f *fakeCore) eventCount(chatID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessions[chatID]; s != nil {
		return len(s.events)
	}
	return 0
}

// events returns a copy of a session's log.
func (f *fakeCore) events(chatID string) []*chatpb.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessions[chatID]; s != nil {
		return append([]*chatpb.Event(nil), s.events...)
	}
	return nil
}

func (f *fakeCore) sessionCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

// startFakeCore serves f over an in-memory listener and returns a client
// dialled with webapi's dial options.
func startFakeCore(t testing.TB, f *fakeCore, tel *telemetry.Telemetry) chatpb.ChatClient {
	t.Helper()
	lis := serveFake(t, f)
	opts := append(DialOptions(tel),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	cc, err := grpc.NewClient("passthrough:///fakecore", opts...)
	if err != nil {
		t.Fatalf("dial fake core: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return chatpb.NewChatClient(cc)
}

// startFakeCoreClient serves f over an in-memory listener and returns the
// chat client webapi runs with in production (package chatclient), with
// the retry policy p.
func startFakeCoreClient(t testing.TB, f *fakeCore, tel *telemetry.Telemetry, p chatclient.Policy) *chatclient.Client {
	t.Helper()
	lis := serveFake(t, f)
	ccfg := chatclient.Config{Targets: []string{"passthrough:///fakecore"}, Policy: p}
	opts := append(DialOptions(tel), grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	client, err := chatclient.New(ccfg, tel, opts...)
	if err != nil {
		t.Fatalf("chat client: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// serveFake serves f on an in-memory listener until the test ends.
func serveFake(t testing.TB, f *fakeCore) *bufconn.Listener {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	chatpb.RegisterChatServer(gs, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis
}
