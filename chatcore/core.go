package chatcore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/detect"
	"github.com/hachat/hachat/chatcore/replica"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/saver"
	"github.com/hachat/hachat/chatcore/sessionlog"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/telemetry"
)

// ChatServiceName is the gRPC health service name that reports SERVING only
// while this core is primary.
const ChatServiceName = "hachat.chat.v1.Chat"

// Core is one chat core: its sessions, transcript saver, role and servers.
// Create it with New and run it with Run (or Serve).
type Core struct {
	chatpb.UnimplementedChatServer
	chatpb.UnimplementedReplicationServer

	cfg     Config
	notices NoticeSet
	store   TranscriptStore
	fencer  Fencer // the epochs and the primary's lease
	// adopted are the other pairs this core adopted (N+1, adopt.go).
	adopted *adoptions
	// solo is the second copy's UCS fallback's mark at the coordination
	// cluster (solo.go; its own lock).
	solo *soloMark
	// ucs is the second copy in UCS while the backup is away (solo.go).
	ucs         *ucsCopy
	claimedFrom atomic.Uint64 // the epoch the last successful claim replaced
	tel         *telemetry.Telemetry
	log         *slog.Logger
	tracer      trace.Tracer
	m           *metrics
	now         func() time.Time

	mu       sync.RWMutex
	sessions map[string]*session
	live     int // sessions not ended (reserved at StartSession)
	// startReqs maps the client_request_id of a StartSession to the session
	// it started, on the primary and (from replicated SESSION_STARTED
	// events) on the backup. An entry leaves with its session.
	startReqs map[string]*session

	watch watchers // WatchSessions streams

	// role is the role state machine (package role): primary or backup,
	// the epoch, draining and unmerged. fencing.go decides its transitions.
	role *role.State

	health *health.Server
	saver  *saver.Saver

	members  Membership          // nil: no gossip
	tls      *mtls.Source        // nil: plaintext gRPC
	witness  AskReachableFunc    // nil: no witness
	repl     *replica.Replicator // primary side of replication (package replica)
	inflight sync.RWMutex        // appends hold it shared; a switchover takes it to drain

	restore *restorer // restoration after a promotion and from UCS (restore.go; reaches the core through restorerHost)
	// promoting holds Chat calls at the gate while this backup promotes
	// itself (promotion.go).
	changing roleChange
	// handedOver is when this core last stepped down at the end of a
	// handover (unix nanoseconds by c.now; 0: never): for
	// handedOverRefusal after it, what it refuses as a backup is
	// errHandedOver (notPrimary).
	handedOver atomic.Int64

	tombs tombstones // sessions forgotten without a complete final save (doubt.go)
	// due holds the sessions that have something due at a time, for the
	// janitor (janitor.go; its lock is a leaf).
	due dueQueue[*session]

	peers        *peers      // the other core and the witness (membership.go)
	replicaStale atomic.Bool // the replica may miss events acked while the link was down
	// detect decides, on the backup, whether the primary is dead (package
	// detect; it remembers the primary it replicates from and gossip's word).
	detect *detect.Detector
	abrupt atomic.Bool // stop without the shutdown handover (tests of crashes)
	// beforeSnapshotAck, when set (tests only, before Serve), runs on a
	// backup that received its primary's snapshot_done, before it applies
	// and acknowledges it; an error ends the stream unsynced.
	beforeSnapshotAck func() error
	metaMu            sync.Mutex
	grpcAddr          string
	httpAddr          string

	guard *guard // the primary's lease and the newer epochs peers claim (guard.go)

	bg background // goroutines Serve owns beyond its servers
}

// background owns the goroutines a core starts beyond its servers (meta
// publishing, restoration after a switchover, clearing the solo mark): they
// run under Serve's context and Serve returns only after they did.
type background struct {
	mu     sync.Mutex
	ctx    context.Context // Serve's context; nil before Serve
	closed bool            // Serve is returning: no new background work
	wg     sync.WaitGroup  // background work Serve waits for
}

// spawn runs f in a goroutine owned by Serve: f gets Serve's context and
// Serve returns only after f did. It reports false (and does not run f)
// before Serve started or once it is stopping.
func (b *background) spawn(f func(ctx context.Context)) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ctx == nil || b.closed {
		return false
	}
	ctx := b.ctx
	b.wg.Go(func() { f(ctx) })
	return true
}

// start lets spawn run work under ctx (Serve's context).
func (b *background) start(ctx context.Context) {
	b.mu.Lock()
	b.ctx, b.closed = ctx, false
	b.mu.Unlock()
}

// stop refuses new background work and waits for the running work.
func (b *background) stop() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.wg.Wait()
}

// Option configures a Core beyond its Config (seams for tests and phase-2 parts).
type Option func(*Core)

// WithClock replaces time.Now (tests of timeouts).
func WithClock(now func() time.Time) Option { return func(c *Core) { c.now = now } }

// New builds a core. store is the UCS seam (ucsmock's client or an in-memory
// double); tel must not be nil (use telemetry.Discard in tests).
func New(cfg Config, store TranscriptStore, tel *telemetry.Telemetry, opts ...Option) (*Core, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || tel == nil {
		return nil, errors.New("new core: store and telemetry are required")
	}
	notices, _ := ParseSaveNotices(cfg.TranscriptSaveNotices) // validated above
	// From here on Cluster is the pair's epoch service (the fencing key and
	// the service of every save): each pair fences and restores its own.
	cfg.Cluster = pairs.Service(cfg.Cluster, cfg.Pair)
	c := &Core{
		cfg:       cfg,
		notices:   notices,
		store:     store,
		tel:       tel,
		log:       tel.Logger.With("core", cfg.Name),
		tracer:    tel.Tracer.Tracer("github.com/hachat/hachat/chatcore"),
		m:         newMetrics(tel.Registry),
		now:       time.Now,
		sessions:  make(map[string]*session),
		startReqs: make(map[string]*session),
		role:      role.New(),
		health:    health.NewServer(),
	}
	for _, o := range opts {
		o(c)
	}
	if c.fencer == nil {
		c.fencer = StoreFencer{Store: store}
	}
	c.saver = newSaver(c)
	c.repl = newReplicator(c)
	c.peers = newPeers(c)
	c.guard = newGuard(c)
	c.detect = detect.New(detect.Config{Name: c.cfg.Name, Pair: c.cfg.Pair}, detectNet{c}, c.members, nil, c.log)
	c.solo = newSoloMark(c.fencer, c.cfg, c.m.solo, c.log, c.stepDown)
	c.ucs = &ucsCopy{solo: c.solo, store: c.store, cb: c.saver.Breaker(), service: c.cfg.Cluster, writer: c.cfg.Name,
		timeout: c.cfg.TranscriptSaveTimeout, copies: c.m.secondCopyToUCS, log: c.log, stepDown: c.stepDown, isPrimary: c.role.IsPrimary}
	c.m.role.snapshot = c.role.RoleEpoch
	c.tombs.gauge, c.tombs.log = c.m.tombstones, c.log
	// The pair, for per-pair sums: chats placed per pair are
	// hachat_core_sessions_started_total joined on this by instance.
	pairInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_core_pair_info",
		Help: "1, labelled with the pair this core belongs to (package pairs)."}, []string{"pair"})
	pairInfo.WithLabelValues(pairs.Norm(cfg.Pair)).Set(1)
	if err := tel.Registry.Register(pairInfo); err != nil {
		return nil, fmt.Errorf("register pair metric: %w", err)
	}
	var err error
	if c.adopted, err = newAdoptions(c, tel.Registry); err != nil {
		return nil, err
	}
	c.restore = newRestorer(c) // after the adoptions it holds
	return c, nil
}

// Config returns the core's configuration.
func (c *Core) Config() Config { return c.cfg }

// Role returns primary or backup.
func (c *Core) Role() string { return c.role.Role() }

// Epoch returns the newest epoch this core knows.
func (c *Core) Epoch() uint64 { return c.role.Epoch() }

// all returns every session of the table (a copy of the list).
func (c *Core) all() []*session {
	c.mu.RLock()
	defer c.mu.RUnlock()
	all := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		all = append(all, s)
	}
	return all
}

// session returns a live or lingering session.
func (c *Core) session(id string) *session {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.sessions[id]
}

// prepareFunc validates a change against the current state (with s.mu held)
// and returns the event to append, or the index of an earlier event that
// makes this one a duplicate, or an error (a gRPC status).
type prepareFunc func(st *sessionlog.State) (ev *chatpb.Event, dup uint64, err error)

// append is the one write path of a session:
// validate -> assign index -> second copy -> commit -> fan-out -> save.
func (c *Core) append(ctx context.Context, s *session, prepare prepareFunc) (uint64, bool, error) {
	return c.appendWith(ctx, s, true, prepare)
}

// appendWith is append; needCopy false skips the wait for a second copy
// (failover notices: no client waits for them). The event still streams to
// an attached backup, in order.
func (c *Core) appendWith(ctx context.Context, s *session, needCopy bool, prepare prepareFunc) (uint64, bool, error) {
	start := time.Now()
	c.inflight.RLock()
	defer c.inflight.RUnlock()
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	if !c.role.IsPrimary() {
		return 0, false, errNotPrimary
	}
	// An event in doubt owns the next index: nothing else may take it
	// until a definite second copy of that same event commits it.
	if err := c.resolveDoubt(ctx, s); err != nil {
		return 0, false, err
	}
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return 0, false, status.Error(codes.NotFound, "unknown session")
	}
	ev, dup, err := prepare(&s.log.State)
	if err != nil || dup != 0 {
		s.mu.Unlock()
		return dup, dup != 0, err
	}
	ev.SessionId = s.id
	ev.Index = s.lastIndex() + 1
	ev.Epoch = c.role.Epoch()
	if ev.UtcUnixMs == 0 {
		ev.UtcUnixMs = c.now().UnixMilli()
	}
	s.mu.Unlock()

	if uncertain, err := c.secondCopy(ctx, s, ev, needCopy); err != nil {
		if uncertain && c.role.IsPrimary() {
			// The copy may exist at the backup or in UCS: the index is ev's.
			return 0, false, c.holdInDoubt(ctx, s, ev, err)
		}
		return 0, false, err
	}
	if !c.role.IsPrimary() { // fenced while waiting for the copy: nothing was acknowledged
		return 0, false, errNotPrimary
	}
	c.commitAppended(ctx, s, ev, start)
	return ev.Index, false, nil
}

// commitAppended commits ev, which has its second copy, and fans it out,
// tells watchers and asks for a save. Call with s.appendMu held.
func (c *Core) commitAppended(ctx context.Context, s *session, ev *chatpb.Event, start time.Time) {
	s.mu.Lock()
	change := c.commitLocked(s, ev)
	save := saveTrigger(c.cfg.TranscriptAutoSave, ev)
	if sc := trace.SpanContextFromContext(ctx); save && sc.IsValid() {
		s.save.Cause = sc // the save's span joins this message's trace
	}
	s.mu.Unlock()

	c.m.eventCounter(ev.Kind).Inc()
	c.m.appendSeconds.Observe(time.Since(start).Seconds())
	if change != nil {
		c.watch.notify(change)
	}
	if save {
		c.saver.Enqueue(s)
	}
}

// commitLocked folds ev into the session, appends it to the log and fans it
// out. It returns the SessionChange to tell watchers, if any. Call with s.mu held.
func (c *Core) commitLocked(s *session, ev *chatpb.Event) *chatpb.SessionChange {
	pub := s.log.Commit(ev).Pub
	for sub := range s.subs {
		if sub.direct != nil {
			if sub.held.Load() == 0 && sub.direct(pub) {
				continue
			}
			sub.held.Add(1)
		}
		select {
		case sub.ch <- pub:
		default:
			delete(s.subs, sub)
			close(sub.ch)
			c.m.subscriberDrops.Inc()
		}
	}
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		s.endedAt = c.now()
		c.due.schedule(s, s.endedAt.Add(c.cfg.EndedSessionLinger))
		c.mu.Lock()
		c.live--
		c.m.sessionsLive.Set(float64(c.live))
		c.mu.Unlock()
		c.m.sessionsEnded.WithLabelValues(s.log.State.EndReason).Inc()
		for sub := range s.subs {
			delete(s.subs, sub)
			close(sub.ch)
		}
		return c.changeLocked(s, chatpb.SessionChange_KIND_ENDED)
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:
		if ev.From.GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			c.due.schedule(s, c.now()) // the janitor starts the customer's idle clock
			return c.changeLocked(s, chatpb.SessionChange_KIND_STARTED)
		}
		return c.changeLocked(s, chatpb.SessionChange_KIND_UPDATED)
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:
		if !s.log.State.Ended {
			return c.changeLocked(s, chatpb.SessionChange_KIND_UPDATED)
		}
	}
	return nil
}

// changeLocked describes the session for WatchSessions. Call with s.mu held.
func (c *Core) changeLocked(s *session, kind chatpb.SessionChange_Kind) *chatpb.SessionChange {
	ch := &chatpb.SessionChange{
		Kind: kind, SessionId: s.id, Service: s.log.State.Service, Subject: s.log.State.Subject,
		UserData: s.log.State.UserData, Participants: s.log.State.Participants(), StartedUnixMs: s.log.State.StartedMs,
	}
	if cu := s.log.State.Customer(); cu != nil {
		ch.CustomerNickname = cu.P.Nickname
	}
	return ch
}

// systemParticipant is the author of events the core itself appends.
var systemParticipant = &chatpb.Participant{Id: "system", Nickname: "system", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}

// endSession appends SESSION_ENDED with reason unless the session already
// ended. It is used by the janitor, the saver and the operations (the
// restorer ends sessions without waiting for the second copy: restore.go).
func (c *Core) endSession(ctx context.Context, s *session, reason string) error {
	_, _, err := c.append(ctx, s, ending(reason))
	if errors.Is(err, errEnded) {
		return nil
	}
	return err
}

// ending prepares SESSION_ENDED with reason, from the system; errEnded
// when the session has already ended.
func ending(reason string) prepareFunc {
	return func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		if st.Ended {
			return nil, 0, errEnded
		}
		return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED, From: systemParticipant,
			Attrs: map[string]string{"reason": reason}}, 0, nil
	}
}

func kindName(k chatpb.EventKind) string {
	n := k.String()
	if len(n) > len("EVENT_KIND_") {
		return n[len("EVENT_KIND_"):]
	}
	return n
}
