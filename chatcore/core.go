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
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"

	"github.com/hachat/hachat/chatcore/chatpb"
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
	// soloMu serializes recording the solo mark; soloEpoch is the epoch
	// whose solo mark this primary recorded (0: none).
	soloMu      sync.Mutex
	soloEpoch   atomic.Uint64
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

	watchMu  sync.Mutex
	watchers map[*watcher]struct{}

	roleMu sync.Mutex
	// termEpoch is the epoch this core claimed for its current term as
	// primary (guarded by roleMu; see roleEpoch).
	termEpoch uint64
	role      string
	epoch     atomic.Uint64
	primary   atomic.Bool
	draining  atomic.Bool
	// unmerged is set while a new primary merges what UCS holds beyond a
	// stale replica: it answers no Chat call and reports NOT_SERVING, so
	// that it never assigns an index the old primary may have acknowledged.
	unmerged  atomic.Bool
	streamCtx context.Context    // cancelled when this core stops being primary
	streamEnd context.CancelFunc // cancels streamCtx

	health *health.Server
	saver  *saver

	members  Membership       // nil: no gossip
	tls      *mtls.Source     // nil: plaintext gRPC
	witness  AskReachableFunc // nil: no witness
	repl     *replicator      // primary side of replication
	inflight sync.RWMutex     // appends hold it shared; a switchover takes it to drain
	roleCh   chan struct{}    // closed and replaced at every role change

	progressMu    sync.Mutex
	progressDirty map[*session]struct{} // saves to report to the backup

	restoreMu sync.Mutex
	restoring map[string]chan struct{} // session ids being rebuilt from UCS

	tombMu    sync.Mutex
	tombs     map[string]tombstone // sessions forgotten without a complete final save (doubt.go)
	tombOrder []string             // tombs' ids, oldest first

	peerMu       sync.Mutex
	peer         *grpc.ClientConn // to peerConnAddr, created on first use
	peerConnAddr string
	sawPrimary   atomic.Bool  // this process has replicated from a primary
	replicaStale atomic.Bool  // the replica may miss events acked while the link was down
	gossipDead   atomic.Bool  // membership declared the primary failed or left
	primaryName  atomic.Value // string: the primary we replicate from
	abrupt       atomic.Bool  // stop without the shutdown handover (tests of crashes)
	metaMu       sync.Mutex
	grpcAddr     string
	httpAddr     string

	refuteMu       sync.Mutex
	refuted        map[string]refutation // newer epochs peers claimed and UCS did not confirm
	unconfirmedLog time.Time             // last "cannot confirm at UCS" log line

	bgMu     sync.Mutex
	bgCtx    context.Context // Serve's context; nil before Serve
	bgClosed bool            // Serve is returning: no new background work
	bgWG     sync.WaitGroup  // background work Serve waits for
}

// spawn runs f in a goroutine owned by Serve: f gets Serve's context and
// Serve returns only after f did. It reports false (and does not run f)
// before Serve started or once it is stopping.
func (c *Core) spawn(f func(ctx context.Context)) bool {
	c.bgMu.Lock()
	defer c.bgMu.Unlock()
	if c.bgCtx == nil || c.bgClosed {
		return false
	}
	ctx := c.bgCtx
	c.bgWG.Go(func() { f(ctx) })
	return true
}

// startBackground lets spawn run work under ctx (Serve's context).
func (c *Core) startBackground(ctx context.Context) {
	c.bgMu.Lock()
	c.bgCtx, c.bgClosed = ctx, false
	c.bgMu.Unlock()
}

// stopBackground refuses new background work and waits for the running work.
func (c *Core) stopBackground() {
	c.bgMu.Lock()
	c.bgClosed = true
	c.bgMu.Unlock()
	c.bgWG.Wait()
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
		watchers:  make(map[*watcher]struct{}),
		role:      RoleBackup,
		health:    health.NewServer(),
	}
	c.streamCtx, c.streamEnd = context.WithCancel(context.Background())
	c.streamEnd() // not primary yet: no stream may live
	for _, o := range opts {
		o(c)
	}
	if c.fencer == nil {
		c.fencer = StoreFencer{Store: store}
	}
	c.saver = newSaver(c)
	c.repl = newReplicator(c)
	c.roleCh = make(chan struct{})
	c.restoring = make(map[string]chan struct{})
	c.progressDirty = make(map[*session]struct{})
	c.m.role.snapshot = c.roleEpoch
	// The pair, for per-pair sums: chats placed per pair are
	// hachat_core_sessions_started_total joined on this by instance.
	pairInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hachat_core_pair_info",
		Help: "1, labelled with the pair this core belongs to (package pairs)."}, []string{"pair"})
	pairInfo.WithLabelValues(pairs.Norm(cfg.Pair)).Set(1)
	if err := tel.Registry.Register(pairInfo); err != nil {
		return nil, fmt.Errorf("register pair metric: %w", err)
	}
	return c, nil
}

// Config returns the core's configuration.
func (c *Core) Config() Config { return c.cfg }

// Role returns primary or backup.
func (c *Core) Role() string {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	return c.role
}

// Epoch returns the newest epoch this core knows.
func (c *Core) Epoch() uint64 { return c.epoch.Load() }

// roleEpoch returns the role with the epoch that goes with it, read together:
// a primary's own epoch (the one it claimed, even after it heard of a newer
// one and before it stepped down), a backup's newest known epoch. /status,
// /metrics and the gossiped meta report this pair, so no reader ever sees a
// primary at an epoch another core holds.
func (c *Core) roleEpoch() (string, uint64) {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	if c.role == RolePrimary {
		return c.role, c.termEpoch
	}
	return c.role, c.epoch.Load()
}

// becomePrimaryLocked makes this core primary at epoch. With serving false
// it is primary but restoring: Chat calls get UNAVAILABLE and health stays
// NOT_SERVING until finishRestoring. Call with roleMu held.
func (c *Core) becomePrimaryLocked(epoch uint64, serving bool) {
	c.epoch.Store(epoch)
	c.termEpoch = epoch
	c.draining.Store(false)
	c.unmerged.Store(!serving)
	c.role = RolePrimary
	c.streamCtx, c.streamEnd = context.WithCancel(context.Background())
	c.primary.Store(true)
	if serving {
		c.health.SetServingStatus(ChatServiceName, healthServing)
	} else {
		c.health.SetServingStatus(ChatServiceName, healthNotServing)
	}
	c.roleChangedLocked()
}

// finishRestoring opens a restoring primary to clients: its log now holds
// every acknowledged event.
func (c *Core) finishRestoring() {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	if c.role != RolePrimary || !c.unmerged.Load() {
		return
	}
	c.unmerged.Store(false)
	c.health.SetServingStatus(ChatServiceName, healthServing)
	c.spawn(c.publishMeta)
}

// roleChangedLocked wakes whoever waits for a role change. Call with roleMu held.
func (c *Core) roleChangedLocked() {
	close(c.roleCh)
	c.roleCh = make(chan struct{})
	c.spawn(c.publishMeta)
}

// roleChanged returns a channel closed at the next role change.
func (c *Core) roleChanged() <-chan struct{} {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	return c.roleCh
}

// stepDown makes this core a backup at once: client streams are closed with
// UNAVAILABLE and the Chat health service turns NOT_SERVING. newer is the
// epoch that fenced it (0 when unknown).
func (c *Core) stepDown(reason string, newer uint64) {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	c.observeEpoch(newer)
	if c.role != RolePrimary {
		return
	}
	c.role = RoleBackup
	c.primary.Store(false)
	c.draining.Store(false)
	c.unmerged.Store(false)
	c.streamEnd()
	c.health.SetServingStatus(ChatServiceName, healthNotServing)
	c.m.stepDowns.Inc()
	c.soloEpoch.Store(0) // a mark of an old epoch stays at etcd, keyed by its epoch
	c.m.solo.Set(0)
	c.repl.dropLink("stepped down")
	c.roleChangedLocked()
	c.log.Warn("stepped down to backup: client streams closed", "reason", reason, "epoch", c.epoch.Load())
}

// freshDecision is how old a decision to promote may be and still be acted
// on without confirming it again (see claim.recheck).
const freshDecision = 50 * time.Millisecond

// claim is one attempt to become primary.
type claim struct {
	// known is the newest epoch the claimant knows; a claim fails with
	// ErrEpochConflict when the store holds a newer one (0: no such check).
	known uint64
	// reason is logged with the claim.
	reason string
	// recheck, when set, confirms the decision to claim again immediately
	// before each compare-and-set whose decision is older than
	// freshDecision; its error drops the claim.
	recheck func(ctx context.Context) error
	// restore claims the role but keeps the core restoring (not serving)
	// until finishRestoring.
	restore bool
	// ifSilent > 0 claims only when the current holder has not renewed its
	// lease for that long (ClaimEpochIfSilent); a live holder drops the
	// claim with errPrimaryAlive.
	ifSilent time.Duration
}

// claimPrimary claims the next epoch at the fencing authority (c.fencer:
// etcd, or UCS without a coordination cluster) with a compare-and-set
// (expect is the epoch it holds now, which must not be newer than cl.known
// when cl.known > 0), retrying while it is unreachable, and becomes
// primary. A lost compare-and-set returns ErrEpochConflict: someone else
// moved first; a failed re-check returns its error and claims nothing.
func (c *Core) claimPrimary(ctx context.Context, cl claim) (uint64, error) {
	ctx, span := c.tracer.Start(ctx, "chatcore.claimEpoch")
	defer span.End()
	known, reason := cl.known, cl.reason
	delay := 50 * time.Millisecond
	decided := time.Now()
	for {
		cur, err := c.fencer.Current(ctx, c.cfg.Cluster)
		if err == nil {
			if known > 0 && cur.Epoch > known && cur.Holder != c.cfg.Name {
				c.observeEpoch(cur.Epoch)
				return 0, fmt.Errorf("epoch %d held by %s is newer than %d: %w", cur.Epoch, cur.Holder, known, ErrEpochConflict)
			}
			if cl.recheck != nil && time.Since(decided) > freshDecision {
				if rerr := cl.recheck(ctx); rerr != nil {
					span.RecordError(rerr)
					return 0, rerr
				}
				decided = time.Now()
			}
			var got Epoch
			got, err = c.fencer.Claim(ctx, c.cfg.Cluster, cur.Epoch, c.cfg.Name, cl.ifSilent)
			if err == nil {
				c.claimedFrom.Store(cur.Epoch)
				c.roleMu.Lock()
				c.becomePrimaryLocked(got.Epoch, !cl.restore)
				c.roleMu.Unlock()
				c.log.InfoContext(ctx, "claimed epoch, now primary", "epoch", got.Epoch, "previous", cur.Epoch, "previous_holder", cur.Holder, "reason", reason)
				return got.Epoch, nil
			}
			if errors.Is(err, ErrHolderAlive) {
				// The holder renewed its lease: it is alive and reaches UCS.
				return 0, fmt.Errorf("%w: claim the epoch after %d: %w", errPrimaryAlive, cur.Epoch, err)
			}
			if errors.Is(err, ErrEpochConflict) {
				return 0, fmt.Errorf("claim the epoch after %d: %w", cur.Epoch, err)
			}
		}
		c.m.fencingFailures.WithLabelValues("claim").Inc()
		if errors.Is(err, ErrForbidden) {
			c.log.ErrorContext(ctx, "UCS refused the epoch claim: missing or wrong writer token (--ucs-token); retrying", "err", err, "retry_in", delay)
		} else {
			c.log.WarnContext(ctx, "epoch claim failed, the fencing authority is unreachable: retrying (no promotion without a fencing epoch)", "err", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("claim epoch: %w", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
		if cl.recheck != nil {
			// Confirm again after the wait, even when UCS stays down: a
			// dropped decision stops the retries and lets the core follow.
			if rerr := cl.recheck(ctx); rerr != nil {
				span.RecordError(rerr)
				return 0, rerr
			}
			decided = time.Now()
		}
	}
}

// observeEpoch records a newer epoch seen elsewhere.
func (c *Core) observeEpoch(e uint64) {
	for {
		cur := c.epoch.Load()
		if e <= cur || c.epoch.CompareAndSwap(cur, e) {
			return
		}
	}
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
type prepareFunc func(st *state) (ev *chatpb.Event, dup uint64, err error)

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
	if !c.primary.Load() {
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
	ev, dup, err := prepare(&s.st)
	if err != nil || dup != 0 {
		s.mu.Unlock()
		return dup, dup != 0, err
	}
	ev.SessionId = s.id
	ev.Index = s.lastIndex() + 1
	ev.Epoch = c.epoch.Load()
	if ev.UtcUnixMs == 0 {
		ev.UtcUnixMs = c.now().UnixMilli()
	}
	s.mu.Unlock()

	if uncertain, err := c.secondCopy(ctx, s, ev, needCopy); err != nil {
		if uncertain && c.primary.Load() {
			// The copy may exist at the backup or in UCS: the index is ev's.
			return 0, false, c.holdInDoubt(ctx, s, ev, err)
		}
		return 0, false, err
	}
	if !c.primary.Load() { // fenced while waiting for the copy: nothing was acknowledged
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
	save := c.saveTrigger(ev)
	if sc := trace.SpanContextFromContext(ctx); save && sc.IsValid() {
		s.saveCause = sc // the save's span joins this message's trace
	}
	s.mu.Unlock()

	c.m.eventCounter(ev.Kind).Inc()
	c.m.appendSeconds.Observe(time.Since(start).Seconds())
	if change != nil {
		c.notifyWatchers(change)
	}
	if save {
		c.saver.enqueue(s)
	}
}

// commitLocked folds ev into the session, appends it to the log and fans it
// out. It returns the SessionChange to tell watchers, if any. Call with s.mu held.
func (c *Core) commitLocked(s *session, ev *chatpb.Event) *chatpb.SessionChange {
	s.st.apply(ev)
	pub := public(ev)
	s.log = append(s.log, entry{ev: ev, pub: pub})
	for sub := range s.subs {
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
		c.mu.Lock()
		c.live--
		c.m.sessionsLive.Set(float64(c.live))
		c.mu.Unlock()
		c.m.sessionsEnded.WithLabelValues(s.st.endReason).Inc()
		for sub := range s.subs {
			delete(s.subs, sub)
			close(sub.ch)
		}
		return c.changeLocked(s, chatpb.SessionChange_KIND_ENDED)
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:
		if ev.From.GetType() == chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
			return c.changeLocked(s, chatpb.SessionChange_KIND_STARTED)
		}
		return c.changeLocked(s, chatpb.SessionChange_KIND_UPDATED)
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:
		if !s.st.ended {
			return c.changeLocked(s, chatpb.SessionChange_KIND_UPDATED)
		}
	}
	return nil
}

// changeLocked describes the session for WatchSessions. Call with s.mu held.
func (c *Core) changeLocked(s *session, kind chatpb.SessionChange_Kind) *chatpb.SessionChange {
	ch := &chatpb.SessionChange{
		Kind: kind, SessionId: s.id, Service: s.st.service, Subject: s.st.subject,
		UserData: s.st.userData, Participants: s.st.participants(), StartedUnixMs: s.st.startedMs,
	}
	if cu := s.st.customer(); cu != nil {
		ch.CustomerNickname = cu.p.Nickname
	}
	return ch
}

// saveTrigger reports whether committing ev asks for a transcript save.
func (c *Core) saveTrigger(ev *chatpb.Event) bool {
	switch {
	case ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		return true
	case c.cfg.TranscriptAutoSave == AutoSaveAtEnd:
		return false
	}
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED,
		chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:
		return false
	}
	return true
}

// savedKind reports whether transcript-save-notices lets ev into the saved transcript.
func (c *Core) savedKind(ev *chatpb.Event) bool {
	var n NoticeSet
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED:
		n = NoticeTyping
	case chatpb.EventKind_EVENT_KIND_PUSH_URL:
		n = NoticePushURL
	case chatpb.EventKind_EVENT_KIND_NOTICE:
		n = NoticeCustom
	case chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:
		n = NoticeSave
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:
		n = NoticeDisconnect
	default:
		return true
	}
	return c.notices&n != 0
}

// systemParticipant is the author of events the core itself appends.
var systemParticipant = &chatpb.Participant{Id: "system", Nickname: "system", Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM}

// endSession appends SESSION_ENDED with reason unless the session already
// ended. It is used by the janitor, the saver and failover.
func (c *Core) endSession(ctx context.Context, s *session, reason string) error {
	return c.endSessionWith(ctx, s, reason, true)
}

func (c *Core) endSessionWith(ctx context.Context, s *session, reason string, needCopy bool) error {
	_, _, err := c.appendWith(ctx, s, needCopy, func(st *state) (*chatpb.Event, uint64, error) {
		if st.ended {
			return nil, 0, errEnded
		}
		return &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_SESSION_ENDED, From: systemParticipant,
			Attrs: map[string]string{"reason": reason}}, 0, nil
	})
	if errors.Is(err, errEnded) {
		return nil
	}
	return err
}

func kindName(k chatpb.EventKind) string {
	n := k.String()
	if len(n) > len("EVENT_KIND_") {
		return n[len("EVENT_KIND_"):]
	}
	return n
}

var (
	errNotPrimary = status.Error(codes.Unavailable, "this chat core is not primary")
	errDraining   = status.Error(codes.Unavailable, "this chat core is draining for a switchover")
	errRestoring  = status.Error(codes.Unavailable, "this chat core was just promoted and is merging the transcripts UCS holds: retry")
	errEnded      = status.Error(codes.FailedPrecondition, "session has ended")
)
