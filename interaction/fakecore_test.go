package interaction

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// fakeCore is a small in-memory chat core for the tests: sessions with an
// event log, participants with visibility filtering (a customer sees only
// VISIBILITY_ALL events), idempotent sends, the session watch, and a switch
// that breaks every open stream as a failover would.
type fakeCore struct {
	chatpb.UnimplementedChatServer
	token string

	mu       sync.Mutex
	seq      int
	sessions map[string]*fakeSession
	watchers map[chan *chatpb.SessionChange]bool
	kill     chan struct{} // closed to break every open stream
	down     bool          // refuse new streams and calls with Unavailable
	joins    int
	refused  int // sends refused while down
	// lazyHeaders makes streams send their headers with the first message
	// only, as the real core does.
	lazyHeaders bool
}

type fakeSession struct {
	id      string
	events  []*chatpb.Event
	parts   map[string]*fakePart
	ended   bool
	changed chan struct{} // closed and replaced on every append
	sent    map[string]uint64
}

type fakePart struct {
	p    *chatpb.Participant
	key  string
	left bool
}

func newFakeCore(token string) *fakeCore {
	return &fakeCore{token: token, sessions: map[string]*fakeSession{},
		watchers: map[chan *chatpb.SessionChange]bool{}, kill: make(chan struct{})}
}

// breakStreams ends every open stream with Unavailable, as a dying core would.
func (f *fakeCore) breakStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.kill)
	f.kill = make(chan struct{})
}

func (f *fakeCore) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	if down {
		close(f.kill)
		f.kill = make(chan struct{})
	}
}

func (f *fakeCore) unavailable() error {
	if f.down {
		return status.Error(codes.Unavailable, "fake core down")
	}
	return nil
}

func (f *fakeCore) appendLocked(s *fakeSession, ev *chatpb.Event) uint64 {
	ev.SessionId = s.id
	ev.Index = uint64(len(s.events) + 1)
	ev.UtcUnixMs = 1700000000000 + int64(ev.Index)
	s.events = append(s.events, ev)
	close(s.changed)
	s.changed = make(chan struct{})
	return ev.Index
}

func (f *fakeCore) notifyLocked(ch *chatpb.SessionChange) {
	for w := range f.watchers {
		select {
		case w <- ch:
		default:
		}
	}
}

func (f *fakeCore) change(s *fakeSession, kind chatpb.SessionChange_Kind) *chatpb.SessionChange {
	var nick string
	for _, p := range s.parts {
		if p.p.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			nick = p.p.Nickname
		}
	}
	return &chatpb.SessionChange{Kind: kind, SessionId: s.id, Service: "svc", CustomerNickname: nick, Subject: "help", StartedUnixMs: 1700000000000}
}

func (f *fakeCore) StartSession(ctx context.Context, in *chatpb.StartSessionRequest) (*chatpb.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unavailable(); err != nil {
		return nil, err
	}
	f.seq++
	s := &fakeSession{id: fmt.Sprintf("chat-%d", f.seq), parts: map[string]*fakePart{}, changed: make(chan struct{}), sent: map[string]uint64{}}
	f.sessions[s.id] = s
	p := &fakePart{p: &chatpb.Participant{Id: s.id + "-c", Nickname: in.Nickname, Type: chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER}, key: "k-" + s.id}
	s.parts[p.p.Id] = p
	f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, From: p.p})
	f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: p.p})
	f.notifyLocked(f.change(s, chatpb.SessionChange_KIND_STARTED))
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: p.p.Id, SecureKey: p.key}, NextIndex: 3}, nil
}

func (f *fakeCore) Join(ctx context.Context, in *chatpb.JoinRequest) (*chatpb.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unavailable(); err != nil {
		return nil, err
	}
	if in.ServiceToken != f.token {
		return nil, status.Error(codes.PermissionDenied, "bad service token")
	}
	s, ok := f.sessions[in.SessionId]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such session")
	}
	if s.ended {
		return nil, status.Error(codes.FailedPrecondition, "session ended")
	}
	f.joins++
	id := fmt.Sprintf("%s-p%d", s.id, len(s.parts))
	p := &fakePart{p: &chatpb.Participant{Id: id, Nickname: in.Nickname, Type: in.Type, Visibility: in.Visibility}, key: "k-" + id}
	s.parts[id] = p
	idx := f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: p.p, Visibility: in.Visibility})
	return &chatpb.JoinResponse{Auth: &chatpb.Auth{SessionId: s.id, ParticipantId: id, SecureKey: p.key}, NextIndex: idx + 1}, nil
}

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

func (f *fakeCore) Send(ctx context.Context, in *chatpb.SendRequest) (*chatpb.SendResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unavailable(); err != nil {
		f.refused++
		return nil, err
	}
	s, p, err := f.authLocked(in.Auth)
	if err != nil {
		return nil, err
	}
	if s.ended || p.left {
		return nil, status.Error(codes.FailedPrecondition, "session ended")
	}
	if len(in.Text) > 4096 {
		return nil, status.Error(codes.InvalidArgument, "message too large")
	}
	if in.ClientMessageId != "" {
		if idx, ok := s.sent[p.p.Id+"/"+in.ClientMessageId]; ok {
			return &chatpb.SendResponse{Index: idx, Duplicate: true}, nil
		}
	}
	vis := in.Visibility
	if p.p.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
		vis = chatpb.Visibility_VISIBILITY_ALL
	}
	idx := f.appendLocked(s, &chatpb.Event{Kind: in.Kind, From: p.p, Text: in.Text, ClientMessageId: in.ClientMessageId, Visibility: vis, Attrs: in.Attrs})
	if in.ClientMessageId != "" {
		s.sent[p.p.Id+"/"+in.ClientMessageId] = idx
	}
	return &chatpb.SendResponse{Index: idx}, nil
}

func (f *fakeCore) Leave(ctx context.Context, in *chatpb.LeaveRequest) (*chatpb.LeaveResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unavailable(); err != nil {
		return nil, err
	}
	s, p, err := f.authLocked(in.Auth)
	if err != nil {
		return nil, err
	}
	if s.ended {
		return nil, status.Error(codes.FailedPrecondition, "session ended")
	}
	p.left = true
	idx := f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT, From: p.p, Visibility: p.p.Visibility})
	if in.EndSession {
		idx = f.endLocked(s, "closed")
	}
	return &chatpb.LeaveResponse{Index: idx}, nil
}

func (f *fakeCore) endLocked(s *fakeSession, reason string) uint64 {
	s.ended = true
	idx := f.appendLocked(s, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED,
		From: &chatpb.Participant{Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}, Attrs: map[string]string{"reason": reason}})
	f.notifyLocked(f.change(s, chatpb.SessionChange_KIND_ENDED))
	return idx
}

// visible reports whether participant p may see ev.
func visible(p *fakePart, ev *chatpb.Event) bool {
	if p.p.Type == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
		return ev.Visibility == chatpb.Visibility_VISIBILITY_ALL
	}
	return true
}

func (f *fakeCore) Subscribe(in *chatpb.SubscribeRequest, st grpc.ServerStreamingServer[chatpb.Event]) error {
	f.mu.Lock()
	if err := f.unavailable(); err != nil {
		f.mu.Unlock()
		return err
	}
	s, p, err := f.authLocked(in.Auth)
	if err == nil && in.FromIndex > uint64(len(s.events)+1) {
		err = status.Errorf(codes.InvalidArgument, "from_index %d is past the end of the log", in.FromIndex)
	}
	kill := f.kill
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if err := f.header(st); err != nil {
		return err
	}
	next := max(in.FromIndex, 1)
	for {
		f.mu.Lock()
		var out []*chatpb.Event
		for _, ev := range s.events[min(int(next-1), len(s.events)):] {
			if visible(p, ev) {
				out = append(out, ev)
			}
		}
		next = uint64(len(s.events) + 1)
		ended, changed := s.ended, s.changed
		f.mu.Unlock()
		for _, ev := range out {
			if err := st.Send(ev); err != nil {
				return err
			}
		}
		if ended {
			return nil
		}
		select {
		case <-st.Context().Done():
			return st.Context().Err()
		case <-kill:
			return status.Error(codes.Unavailable, "fake core failover")
		case <-changed:
		}
	}
}

func (f *fakeCore) WatchSessions(in *chatpb.WatchSessionsRequest, st grpc.ServerStreamingServer[chatpb.SessionChange]) error {
	f.mu.Lock()
	if err := f.unavailable(); err != nil {
		f.mu.Unlock()
		return err
	}
	if in.ServiceToken != f.token {
		f.mu.Unlock()
		return status.Error(codes.PermissionDenied, "bad service token")
	}
	w := make(chan *chatpb.SessionChange, 1000)
	f.watchers[w] = true
	var live []*chatpb.SessionChange
	for _, s := range f.sessions {
		if !s.ended {
			live = append(live, f.change(s, chatpb.SessionChange_KIND_STARTED))
		}
	}
	kill := f.kill
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.watchers, w)
		f.mu.Unlock()
	}()
	if err := f.header(st); err != nil {
		return err
	}
	for _, ch := range live {
		if err := st.Send(ch); err != nil {
			return err
		}
	}
	for {
		select {
		case <-st.Context().Done():
			return st.Context().Err()
		case <-kill:
			return status.Error(codes.Unavailable, "fake core failover")
		case ch := <-w:
			if err := st.Send(ch); err != nil {
				return err
			}
		}
	}
}

func (f *fakeCore) header(st grpc.ServerStream) error {
	f.mu.Lock()
	lazy := f.lazyHeaders
	f.mu.Unlock()
	if lazy {
		return nil
	}
	return st.SendHeader(metadata.MD{})
}

func (f *fakeCore) Status(ctx context.Context, in *chatpb.StatusRequest) (*chatpb.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unavailable(); err != nil {
		return nil, err
	}
	return &chatpb.StatusResponse{Name: "fake", Role: "primary", Epoch: 1}, nil
}

// customerView returns the events the customer of chat sees.
func (f *fakeCore) customerView(chat string) []*chatpb.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[chat]
	var out []*chatpb.Event
	for _, p := range s.parts {
		if p.p.Type != chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			continue
		}
		for _, ev := range s.events {
			if visible(p, ev) {
				out = append(out, ev)
			}
		}
	}
	return out
}

// log returns a copy of chat's whole log.
func (f *fakeCore) log(chat string) []*chatpb.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*chatpb.Event(nil), f.sessions[chat].events...)
}

func (f *fakeCore) ended(chat string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[chat].ended
}

// fakeTarget is the gRPC target of a fake core; dial it with serveFake's option.
const fakeTarget = "passthrough:///fakecore"

// serveFake starts f on an in-memory listener and returns the dial option
// that reaches it.
func serveFake(t *testing.T, f *fakeCore) grpc.DialOption {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	chatpb.RegisterChatServer(gs, f)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
}

// dialFake returns a plain client connection to the fake core.
func dialFake(t *testing.T, dial grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(fakeTarget, dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
