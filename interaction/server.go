// Package interaction is the Interaction Server: it watches the chat core for
// new chat sessions, queues them, offers each to the ready agent idle longest,
// joins the chat as the agent who accepts, and serves the agent API, a push
// channel (Server-Sent Events) and the agent desktop page at /agent.
//
// Every caller proves who it is (package interaction/auth: an accounts file
// of password hashes, or an identity provider's ID token) and gets a session;
// the role comes from the account, never from the request. An agent reaches
// only its own offers and chats; listing, monitoring and coaching need the
// supervisor role (login.go, security.go).
//
// The queue and offer rules live in Router, a pure state machine with an
// injected clock. Server wraps it with I/O: the WatchSessions loop, one
// Subscribe loop per chat participation (agent or supervisor), the offer
// timer and the HTTP handlers. Everything it learns from the core is resumed
// after a failover: the watch is reopened (STARTED for a known session is
// ignored) and each chat stream resumes from the index after the last event.
package interaction

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/jsonenc"
	"github.com/hachat/hachat/pause"
	"github.com/hachat/hachat/telemetry"
)

// Backoff between attempts to reopen a broken stream to the chat core.
const (
	minRetry = 20 * time.Millisecond
	maxRetry = 1 * time.Second
)

// transcriptCache is how many events of one chat the server keeps per
// participation, to replay them to a desktop that (re)connects.
const transcriptCache = 2000

// memberKey names one participation: a chat and the agent or supervisor in it.
type memberKey struct{ chat, agent string }

// member is the server's participation in a chat on behalf of one agent
// (mode agent) or supervisor (monitor, coach). Fields after auth are guarded
// by Server.mu.
type member struct {
	key    memberKey
	lead   context.Context // the leadership the participation belongs to
	info   ChatInfo
	auth   *chatpb.Auth
	cancel context.CancelFunc
	done   chan struct{}

	mode      string
	next      uint64 // index of the next event expected
	events    []chatEventJSON
	connected bool
	everUp    bool
	gone      bool
	leaving   string // reason of a leave or close in flight
}

// Server is the Interaction Server. Build it with New, serve it with Run or
// Serve; Handler returns its HTTP routes for tests.
type Server struct {
	cfg     Config
	core    chatpb.ChatClient
	tel     *telemetry.Telemetry
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics
	hub     *hub
	authn   *authn
	handler http.Handler
	kick    chan struct{}

	ctx    context.Context // parent of every goroutine the server starts
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ha    haState // leadership among instances (a StateStore); zero: always leads
	dirty chan struct{}

	mu       sync.Mutex
	lead     context.Context // parent of the leader's goroutines: s.ctx, or the current term's
	router   *Router
	members  map[memberKey]*member
	byAgent  map[string]map[string]*member   // agent → chat → member
	joining  map[memberKey]bool              // supervisor joins in flight
	ended    map[string]map[string]endedPart // agent → chat → a participation that ended lately
	coreUp   bool                            // the chat core is reachable and the watch not known broken
	coreEver bool                            // coreUp has been true at least once
	evJSON   []byte                          // a chat event's JSON being written (onChatEvent), reused
	lastFail time.Time                       // when a stream to the core last failed
	refused  bool                            // the core refused the watch (bad service token)
}

// New builds a Server that reaches the chat core through core (normally a
// *chatclient.Client, which retries and resumes across failovers).
func New(cfg Config, core chatpb.ChatClient, tel *telemetry.Telemetry, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("interaction config: %w", err)
	}
	if core == nil {
		return nil, errors.New("interaction: no chat core client")
	}
	if tel == nil {
		tel = telemetry.Discard()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:     cfg,
		core:    core,
		tel:     tel,
		log:     tel.Logger.With("component", "interaction"),
		now:     time.Now,
		hub:     newHub(),
		kick:    make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		router:  NewRouter(cfg.MaxChatsPerAgent, cfg.OfferTimeout),
		members: map[memberKey]*member{},
		byAgent: map[string]map[string]*member{},
		joining: map[memberKey]bool{},
		ended:   map[string]map[string]endedPart{},
		dirty:   make(chan struct{}, 1),
	}
	s.lead = ctx
	for _, o := range opts {
		o(s)
	}
	a, err := newAuthn(ctx, cfg)
	if err != nil {
		cancel()
		return nil, err
	}
	s.authn = a
	m, err := newMetrics(tel.Registry, s)
	if err != nil {
		cancel()
		return nil, err
	}
	s.metrics = m
	s.handler = s.routes()
	return s, nil
}

// Handler returns the HTTP handler: agent API, push channel, desktop page,
// /metrics and /healthz, wrapped in otelhttp when spans are exported.
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on cfg.HTTP and serves until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.HTTP)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.HTTP, err)
	}
	return s.Serve(ctx, ln)
}

// Serve runs the session watch, the offer timer and the HTTP server on ln
// until ctx is cancelled, then stops everything it started. A Server serves
// once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.log.Info("interaction server up", "http", ln.Addr().String(),
		"offerTimeout", s.cfg.OfferTimeout, "maxChatsPerAgent", s.cfg.MaxChatsPerAgent)
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return s.ctx }}
	if s.ha.store == nil {
		s.metrics.leader.Set(1)
		s.startLeading(s.ctx, &s.wg)
	} else {
		s.wg.Go(func() { s.haLoop(s.ctx) })
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("http serve: %w", err)
	}
	s.cancel() // ends push connections, the watch, the timer and every chat stream
	shutCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if serr := srv.Shutdown(shutCtx); serr != nil && err == nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = fmt.Errorf("http shutdown: %w", serr)
	}
	s.wg.Wait()
	s.log.Info("interaction server stopped")
	return err
}

// apply publishes routing notices; s.mu is held.
func (s *Server) apply(ns []Notice) {
	if len(ns) > 0 {
		s.changedLocked(slices.ContainsFunc(ns, func(n Notice) bool { return n.Kind == NoticeOffer }))
	}
	offered := false
	for _, n := range ns {
		switch n.Kind {
		case NoticeOffer:
			offered = true
			s.metrics.offers.Inc()
			s.log.Info("chat offered", "chat", n.Chat.ID, "agent", n.Agent, "until", n.Deadline.Format(time.RFC3339Nano))
			s.hub.publish(n.Agent, newMsg(evOffer, offerJSON{ChatInfo: n.Chat, ExpiresAt: n.Deadline}))
		case NoticeWithdrawn:
			switch n.Reason {
			case ReasonTimeout:
				s.metrics.offerTimeouts.Inc()
			case ReasonRejected:
				s.metrics.offersRejected.Inc()
			}
			s.log.Info("offer withdrawn", "chat", n.Chat.ID, "agent", n.Agent, "reason", n.Reason)
			s.hub.publish(n.Agent, newMsg(evWithdrawn, withdrawnJSON{ChatID: n.Chat.ID, Reason: n.Reason}))
		case NoticeQueue:
			s.hub.broadcast(newMsg(evQueue, queueJSON{Size: n.Queue}))
		}
	}
	if offered {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// offerTimer withdraws offers when their deadline passes.
func (s *Server) offerTimer(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		d, ok := s.router.NextDeadline()
		s.mu.Unlock()
		wait := time.Hour
		if ok {
			wait = max(d.Sub(s.now()), 0)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
			s.mu.Lock()
			s.apply(s.router.Tick(s.now()))
			s.mu.Unlock()
		}
	}
}

func nextBackoff(d time.Duration) time.Duration { return min(d*2, maxRetry) }

// coreErr classifies an error of the chat core for the agent API.
func coreErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w: %w", op, ErrCoreUnavailable, err)
	}
	st, _ := status.FromError(err)
	var class error
	switch st.Code() {
	case codes.InvalidArgument:
		class = ErrBadRequest
	case codes.NotFound:
		class = ErrUnknownChat
	case codes.FailedPrecondition:
		class = ErrChatEnded
	case codes.ResourceExhausted:
		class = ErrTooMany
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		class = ErrCoreUnavailable
	default:
		class = ErrCore
	}
	return fmt.Errorf("%s: %w: %s", op, class, st.Message())
}

// sweepEvery is how often expired sessions and sign-ins are swept.
const sweepEvery = 30 * time.Second

// ---- the session watch ----

// coreQuiet is how long after a stream failure a Status answer alone may
// count the core as connected again, so that a core that accepts calls but
// keeps breaking streams does not make the notices flap.
const coreQuiet = 500 * time.Millisecond

// watchLoop keeps a WatchSessions stream open, queueing every new session and
// forgetting ended ones. A reopened watch repeats STARTED for every live
// session; the router ignores the ones it knows.
func (s *Server) watchLoop(ctx context.Context) {
	backoff := minRetry
	for ctx.Err() == nil {
		// A resilient client reports the losses it rides out; its "resumed"
		// is not trusted (a refused stream can look accepted), the first
		// message or the Status probe is.
		obs := func(up bool, err error) {
			if !up {
				s.coreDown(err)
			}
		}
		st, err := s.core.WatchSessions(withObserver(ctx, obs), &chatpb.WatchSessionsRequest{ServiceToken: s.cfg.ServiceToken})
		if err == nil {
			for {
				var ch *chatpb.SessionChange
				if ch, err = st.Recv(); err != nil {
					break
				}
				s.coreUpNow("watch")
				backoff = minRetry
				s.onSessionChange(ch)
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.coreDown(err)
		if c := status.Code(err); c == codes.PermissionDenied || c == codes.Unauthenticated || c == codes.InvalidArgument {
			s.log.Error("chat core refused the session watch: check service-token", "err", err)
			s.mu.Lock()
			s.refused = true
			s.mu.Unlock()
			backoff = maxRetry
		}
		if !pause.For(ctx, backoff) {
			return
		}
		backoff = nextBackoff(backoff)
	}
}

// coreMonitor tells when the core is back. A core sends a stream's headers
// with its first message, so an open watch on an idle core looks the same as
// one still connecting: while the core counts as down, the monitor asks it
// for its Status, and a primary that answers, with no stream failure for
// coreQuiet, counts as connected.
func (s *Server) coreMonitor(ctx context.Context) {
	backoff := minRetry
	for {
		if !pause.For(ctx, backoff) {
			return
		}
		s.mu.Lock()
		up, refused := s.coreUp, s.refused
		s.mu.Unlock()
		if up || refused {
			backoff = coreQuiet
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := s.core.Status(actx, &chatpb.StatusRequest{})
		cancel()
		if err == nil && resp.GetRole() == "primary" {
			s.coreUpNow("status")
			backoff = minRetry
			continue
		}
		backoff = min(nextBackoff(backoff), coreQuiet)
	}
}

// coreUpNow records that the core answered (from: "watch", a message on the
// session watch, or "status", the probe) and tells every desktop when that is
// news. A probe's answer counts only coreQuiet after the last failure.
func (s *Server) coreUpNow(from string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if from == "watch" {
		s.refused = false
	}
	if s.coreUp || from == "status" && s.now().Sub(s.lastFail) < coreQuiet {
		return
	}
	s.coreUp = true
	s.metrics.coreUp.Set(1)
	msg := "reconnected to the chat core"
	if !s.coreEver {
		msg = "connected to the chat core"
	}
	s.coreEver = true
	s.log.Info("chat core connected", "by", from)
	s.hub.broadcast(newMsg(evReconnected, noticeJSON{Scope: "core", Message: msg}))
}

// coreDown records a stream failure and tells every desktop when that is news.
func (s *Server) coreDown(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastFail = s.now()
	if !s.coreUp {
		return
	}
	s.coreUp = false
	s.metrics.coreUp.Set(0)
	s.metrics.reconnects.WithLabelValues("watch").Inc()
	s.log.Warn("chat core watch lost, reconnecting", "err", err)
	s.hub.broadcast(newMsg(evReconnecting, noticeJSON{Scope: "core", Message: "connection to the chat core lost, reconnecting"}))
}

func (s *Server) onSessionChange(ch *chatpb.SessionChange) {
	id := ch.GetSessionId()
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ch.GetKind() {
	case chatpb.SessionChange_KIND_STARTED:
		if s.queueFullLocked(id) {
			s.wg.Go(func() { s.turnAway(id) })
			return
		}
		added, ns := s.router.AddChat(infoFromChange(ch), s.now())
		if added {
			s.metrics.chatsQueued.Inc()
			s.log.Info("chat queued", "chat", id, "customer", ch.GetCustomerNickname(), "queue", s.router.QueueLen())
		}
		s.apply(ns)
	case chatpb.SessionChange_KIND_ENDED:
		s.endChatLocked(id, ReasonEnded)
	}
}

// endChatLocked forgets an ended chat: routing state, and every
// participation after a grace period in which the last events (the end
// itself) still reach the desktops.
func (s *Server) endChatLocked(chat, reason string) {
	if was, ns, ok := s.router.EndChat(chat, s.now()); ok {
		s.log.Info("chat ended", "chat", chat, "state", was.State, "agent", was.Agent, "reason", reason)
		s.apply(ns)
	}
	for _, m := range s.members {
		if m.key.chat == chat && !m.gone {
			time.AfterFunc(2*time.Second, m.cancel)
		}
	}
}

// ---- chat participations ----

// addMemberLocked records a participation and starts following its events.
func (s *Server) addMemberLocked(key memberKey, info ChatInfo, auth *chatpb.Auth, mode string) *member {
	lead := s.lead
	ctx, cancel := context.WithCancel(lead)
	m := &member{lead: lead, key: key, info: info, auth: auth, cancel: cancel, done: make(chan struct{}), mode: mode, next: 1}
	s.members[key] = m
	if s.byAgent[key.agent] == nil {
		s.byAgent[key.agent] = map[string]*member{}
	}
	s.byAgent[key.agent][key.chat] = m
	s.hub.publish(key.agent, newMsg(evChatAdded, s.chatJSONLocked(m)))
	s.wg.Go(func() { s.follow(ctx, m) })
	return m
}

// dropMemberLocked forgets a participation, stops its stream and tells the
// desktop why.
func (s *Server) dropMemberLocked(m *member, reason string) {
	if m.gone {
		return
	}
	m.gone = true
	m.cancel()
	delete(s.members, m.key)
	if byChat := s.byAgent[m.key.agent]; byChat != nil {
		delete(byChat, m.key.chat)
		if len(byChat) == 0 {
			delete(s.byAgent, m.key.agent)
		}
	}
	s.log.Info("participation ended", "chat", m.key.chat, "agent", m.key.agent, "mode", m.mode, "reason", reason)
	s.hub.publish(m.key.agent, newMsg(evChatRemoved, removedJSON{ChatID: m.key.chat, Reason: reason}))
	s.keepEndedLocked(m, reason)
}

// endedRetention is how long the transcript of an ended participation is
// still replayed to a push channel that opens: a desktop whose channel was
// down (or open at a deposed leader) when the chat ended still gets the
// tail and the end once it reconnects.
const endedRetention = 2 * time.Minute

// rereadTimeout bounds reading an ended chat's transcript again.
const rereadTimeout = 10 * time.Second

// endedPart is the cached transcript of a participation that ended, kept
// for endedRetention.
type endedPart struct {
	events []chatEventJSON
	reason string
	at     time.Time
	state  MemberState // what reads the transcript again after a takeover
}

// keepEndedLocked keeps m's transcript for the push channels that open in
// the next endedRetention, and forgets the ones older than that.
func (s *Server) keepEndedLocked(m *member, reason string) {
	now := s.now()
	s.pruneEndedLocked(now)
	if len(m.events) == 0 {
		return
	}
	if s.ended[m.key.agent] == nil {
		s.ended[m.key.agent] = map[string]endedPart{}
	}
	s.ended[m.key.agent][m.key.chat] = endedPart{events: m.events, reason: reason, at: now, state: m.state()}
	s.changedLocked(false) // the next leader needs it too
}

// state returns the participation as a snapshot keeps it.
func (m *member) state() MemberState {
	return MemberState{Chat: m.key.chat, Agent: m.key.agent, Mode: m.mode, Info: m.info,
		SessionID: m.auth.GetSessionId(), ParticipantID: m.auth.GetParticipantId(), SecureKey: m.auth.GetSecureKey()}
}

// rereadEnded reads the transcript of a participation that ended under the
// previous leader back from the core (which keeps an ended session readable
// for a while), keeps it as ended here and sends it to the agent's open
// channels: a desktop that had no channel when the old leader learnt of the
// end still gets it. A session the core no longer has is left alone.
func (s *Server) rereadEnded(lead context.Context, e EndedState) {
	ctx, cancel := context.WithTimeout(lead, rereadTimeout)
	defer cancel()
	auth := &chatpb.Auth{SessionId: e.SessionID, ParticipantId: e.ParticipantID, SecureKey: e.SecureKey}
	st, err := s.core.Subscribe(ctx, &chatpb.SubscribeRequest{Auth: auth, FromIndex: 1})
	if err != nil {
		s.log.Debug("ended chat not read again", "chat", e.Chat, "agent", e.Agent, "err", err)
		return
	}
	var evs []chatEventJSON
	for {
		ev, err := st.Recv()
		if err != nil {
			break
		}
		ej := toEventJSON(ev)
		if ej.ChatID == "" {
			ej.ChatID = e.Chat
		}
		evs = append(evs, ej)
		if ev.GetKind() == chatpb.EventKind_EVENT_KIND_SESSION_ENDED ||
			ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.GetFrom().GetId() == e.ParticipantID {
			break
		}
	}
	if len(evs) > transcriptCache {
		evs = evs[len(evs)-transcriptCache:]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(evs) == 0 || s.lead != lead || lead.Err() != nil || s.byAgent[e.Agent][e.Chat] != nil {
		return // nothing read, no longer leading, or taking part again
	}
	if s.ended[e.Agent] == nil {
		s.ended[e.Agent] = map[string]endedPart{}
	}
	s.ended[e.Agent][e.Chat] = endedPart{events: evs, reason: e.Reason, at: e.At, state: e.MemberState}
	for _, ej := range evs {
		s.hub.publish(e.Agent, newMsg(evChat, ej))
	}
	s.hub.publish(e.Agent, newMsg(evChatRemoved, removedJSON{ChatID: e.Chat, Reason: e.Reason}))
}

// pruneEndedLocked forgets ended participations older than endedRetention.
func (s *Server) pruneEndedLocked(now time.Time) {
	for agent, byChat := range s.ended {
		for chat, e := range byChat {
			if now.Sub(e.at) >= endedRetention {
				delete(byChat, chat)
			}
		}
		if len(byChat) == 0 {
			delete(s.ended, agent)
		}
	}
}

func (s *Server) chatJSONLocked(m *member) chatJSON {
	cj := chatJSON{ChatInfo: m.info, Mode: m.mode, ParticipantID: m.auth.GetParticipantId(), NextIndex: m.next, Connected: m.connected}
	if cv, ok := s.router.Chat(m.key.chat); ok {
		cj.ChatInfo = cv.Info
		cj.AgentID = cv.Agent
	}
	return cj
}

// follow streams the participation's events to its desktop, resuming from the
// index after the last event whenever the stream breaks, until the session
// ends, the participation is dropped or the server stops.
func (s *Server) follow(ctx context.Context, m *member) {
	defer close(m.done)
	defer func() {
		if m.lead.Err() == nil { // cancelled after the session ended: forget it
			s.mu.Lock()
			s.dropMemberLocked(m, ReasonEnded)
			s.mu.Unlock()
		}
	}()
	backoff := minRetry
	// As for the watch: a resilient client's losses count, its "resumed"
	// does not; the next event does.
	obs := func(up bool, err error) {
		if !up {
			s.setMemberConnected(m, false, err)
		}
	}
	// Events taken straight from the core client's stream reader
	// (takeChatEvent) count for the backoff as the ones read here do.
	var took atomic.Bool
	sctx := withEventTaker(withObserver(ctx, obs), func(ev *chatpb.Event) bool {
		if !s.takeChatEvent(m, ev) {
			return false
		}
		took.Store(true)
		return true
	})
	fromStart := false
	for ctx.Err() == nil {
		s.mu.Lock()
		from := m.next
		s.mu.Unlock()
		if fromStart {
			from, fromStart = 1, false // events already seen are skipped by index
		}
		st, err := s.core.Subscribe(sctx, &chatpb.SubscribeRequest{Auth: m.auth, FromIndex: from})
		if err == nil {
			for {
				var ev *chatpb.Event
				if ev, err = st.Recv(); err != nil {
					break
				}
				backoff = minRetry
				s.setMemberConnected(m, true, nil)
				if s.onChatEvent(m, ev) {
					return
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		if took.Swap(false) {
			backoff = minRetry
		}
		switch status.Code(err) {
		case codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied:
			// The session is gone (or our participant is): nothing to resume.
			s.mu.Lock()
			s.log.Info("chat stream closed by the core", "chat", m.key.chat, "agent", m.key.agent, "err", err)
			s.endChatLocked(m.key.chat, ReasonEnded)
			s.dropMemberLocked(m, ReasonEnded)
			s.mu.Unlock()
			return
		case codes.InvalidArgument:
			// Our resume index is past the end of the serving core's log:
			// read it from the start rather than wait for ever.
			s.log.Error("chat resume index refused, rereading the chat", "chat", m.key.chat, "agent", m.key.agent, "err", err)
			fromStart = true
		}
		s.setMemberConnected(m, false, err)
		if !pause.For(ctx, backoff) {
			return
		}
		backoff = nextBackoff(backoff)
	}
}

func (s *Server) setMemberConnected(m *member, up bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setMemberConnectedLocked(m, up, err)
}

func (s *Server) setMemberConnectedLocked(m *member, up bool, err error) {
	if m.gone || m.connected == up {
		return
	}
	m.connected = up
	if up && !m.everUp {
		m.everUp = true
		return // the first connection is not a reconnect
	}
	if up {
		s.log.Info("chat stream resumed", "chat", m.key.chat, "agent", m.key.agent, "from", m.next)
		s.hub.publish(m.key.agent, newMsg(evReconnected, noticeJSON{Scope: "chat", ChatID: m.key.chat, Message: "chat reconnected"}))
		return
	}
	s.metrics.reconnects.WithLabelValues("chat").Inc()
	s.log.Warn("chat stream lost, resuming", "chat", m.key.chat, "agent", m.key.agent, "next", m.next, "err", err)
	s.hub.publish(m.key.agent, newMsg(evReconnecting, noticeJSON{Scope: "chat", ChatID: m.key.chat, Message: "chat connection lost, reconnecting"}))
}

// takeChatEvent is follow's reading of ev (the stream is up, the event
// recorded and forwarded) on the core client's stream reader, which carries
// the events of many chats and must never wait: it reports false, and ev
// comes to follow through Recv, when s.mu is busy, the participation is
// gone, or ev may end it.
func (s *Server) takeChatEvent(m *member, ev *chatpb.Event) bool {
	if ev.GetKind() == chatpb.EventKind_EVENT_KIND_SESSION_ENDED || ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT {
		return false
	}
	if !s.mu.TryLock() {
		return false
	}
	defer s.mu.Unlock()
	if m.gone {
		return false
	}
	s.setMemberConnectedLocked(m, true, nil)
	s.onChatEventLocked(m, ev)
	return true
}

// onChatEvent records and forwards one event; it reports whether the
// participation is over (session ended, or this participant left).
func (s *Server) onChatEvent(m *member, ev *chatpb.Event) (over bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.onChatEventLocked(m, ev)
}

func (s *Server) onChatEventLocked(m *member, ev *chatpb.Event) (over bool) {
	if m.gone {
		return true
	}
	if ev.GetIndex() < m.next {
		return false // delivered before a resume
	}
	m.next = ev.GetIndex() + 1
	ej := toEventJSON(ev)
	if ej.ChatID == "" {
		ej.ChatID = m.key.chat
	}
	m.events = append(m.events, ej)
	if len(m.events) > transcriptCache {
		m.events = m.events[len(m.events)-transcriptCache:]
	}
	// newMsg's bytes, by hand, into a buffer kept for the next event; the
	// message gets an exact copy (it waits on the push channels).
	b := ej.appendJSON(s.evJSON[:0])
	s.hub.publish(m.key.agent, sseMsg{event: evChat, data: append([]byte(nil), b...)})
	s.evJSON = jsonenc.Reuse(b) // a long message's buffer is not kept
	switch {
	case ev.GetKind() == chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		s.endChatLocked(m.key.chat, ReasonEnded)
		s.dropMemberLocked(m, ReasonEnded)
		return true
	case ev.GetKind() == chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT && ev.GetFrom().GetId() == m.auth.GetParticipantId():
		reason := m.leaving
		if reason == "" && m.mode == ModeAgent {
			// Removed by someone else: the customer still needs an agent.
			reason = "removed"
			s.apply(s.router.End(m.key.agent, m.key.chat, true, true, s.now()))
		}
		if reason == "" {
			reason = "left"
		}
		s.dropMemberLocked(m, reason)
		return true
	}
	return false
}

// held counts what the server holds per chat, per participation and per
// agent, so that a test can check that ended chats and logged-out agents
// leave nothing behind.
type held struct {
	Tokens, Members, AgentsWithChats, Joining int // Server maps
	Agents, Chats, Queue                      int // Router
	PushAgents, PushConns                     int // hub
}

// heldNow returns the current counts.
func (s *Server) heldNow() held {
	tokens := s.authn.sessions.Len()
	s.mu.Lock()
	h := held{Tokens: tokens, Members: len(s.members), AgentsWithChats: len(s.byAgent), Joining: len(s.joining),
		Agents: len(s.router.agents), Chats: len(s.router.chats), Queue: len(s.router.queue)}
	s.mu.Unlock()
	s.hub.mu.Lock()
	h.PushAgents = len(s.hub.subs)
	for _, ss := range s.hub.subs {
		h.PushConns += len(ss)
	}
	s.hub.mu.Unlock()
	return h
}
