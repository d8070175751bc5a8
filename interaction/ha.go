package interaction

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hachat/hachat/pause"
)

// Option configures a Server beyond its Config.
type Option func(*Server)

// WithStateStore makes the Server one of several instances that share st:
// the elected leader routes and saves its state to st after every change;
// the others forward the agent API to the leader and take over, from the
// saved state, when it dies. advertise is this instance's base URL
// (http://host:port) as the other instances reach it; transport, if not
// nil, is the one they forward with (for an https leader).
func WithStateStore(st StateStore, advertise string, transport http.RoundTripper) Option {
	return func(s *Server) {
		s.ha.store, s.ha.addr = st, strings.TrimSuffix(advertise, "/")
		if transport == nil {
			t := http.DefaultTransport.(*http.Transport).Clone()
			// A paused leader must not hold forwarded calls for ever; the
			// push channel answers its headers at once, a join within
			// stateChangeTimeout.
			t.ResponseHeaderTimeout = stateChangeTimeout + 5*time.Second
			transport = t
		}
		s.ha.transport = transport
	}
}

// haState is the Server's part in the election among instances.
type haState struct {
	store     StateStore
	addr      string
	transport http.RoundTripper

	mu   sync.Mutex
	term Term // nil while following

	// What the leader last saved (guarded by Server.mu): its term and the
	// SHA-256 of the snapshot without its time.
	savedTerm Term
	savedSum  [32]byte
	proxies   map[string]*httputil.ReverseProxy

	// ineligible is set while the instance cannot reach the chat cores
	// (SetEligible): it neither campaigns nor keeps the lead. changed is
	// closed and replaced at every change.
	ineligible bool
	changed    chan struct{}
}

// SetEligible tells a Server with a state store whether it may lead: an
// instance cut off from the chat cores (its sidecar died) resigns at once
// so that another instance leads, and campaigns again once eligible.
func (s *Server) SetEligible(ok bool) {
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	if s.ha.ineligible == !ok {
		return
	}
	s.ha.ineligible = !ok
	if s.ha.changed != nil {
		close(s.ha.changed)
	}
	s.ha.changed = make(chan struct{})
}

// eligibility returns whether the Server may lead and a channel closed at
// the next change.
func (s *Server) eligibility() (bool, <-chan struct{}) {
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	if s.ha.changed == nil {
		s.ha.changed = make(chan struct{})
	}
	return !s.ha.ineligible, s.ha.changed
}

// saveTimeout bounds one save of the routing state.
const saveTimeout = 2 * time.Second

// persistEvery is how often the leader saves even without a change, so that
// the sessions' last activity reaches the store.
const persistEvery = 5 * time.Second

func (s *Server) currentTerm() Term {
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	return s.ha.term
}

// Leading reports whether this instance routes: always without a state
// store, else while it holds the leadership.
func (s *Server) Leading() bool { return s.ha.store == nil || s.currentTerm() != nil }

// startLeading starts the goroutines only the leader runs.
func (s *Server) startLeading(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() { s.watchLoop(ctx) })
	wg.Go(func() { s.coreMonitor(ctx) })
	wg.Go(func() { s.offerTimer(ctx) })
	wg.Go(func() { s.sessionSweeper(ctx, max(min(sweepEvery, s.cfg.SessionIdle/2), 10*time.Millisecond)) })
	if s.ha.store != nil {
		wg.Go(func() { s.persister(ctx) })
	}
}

// haLoop campaigns for the leadership, leads until the term ends, forgets
// everything it held and campaigns again, until ctx ends.
func (s *Server) haLoop(ctx context.Context) {
	for ctx.Err() == nil {
		ok, changed := s.eligibility()
		if !ok {
			s.log.Warn("interaction instance cut off from the chat cores: not campaigning")
			select {
			case <-changed:
			case <-ctx.Done():
			}
			continue
		}
		s.log.Info("interaction instance following, campaigning for leadership", "advertise", s.ha.addr)
		cctx, ccancel := context.WithCancel(ctx)
		go func() { // owned by this iteration: ends with ccancel
			select {
			case <-changed:
				ccancel()
			case <-cctx.Done():
			}
		}()
		term, err := s.ha.store.Campaign(cctx, s.ha.addr)
		if err != nil && cctx.Err() != nil && ctx.Err() == nil {
			ccancel()
			continue // eligibility changed while campaigning
		}
		if err != nil {
			ccancel()
			if ctx.Err() == nil {
				s.log.Warn("campaign for interaction leadership failed, retrying", "err", err)
				pause.For(ctx, time.Second)
			}
			continue
		}
		lctx, lcancel := context.WithCancel(ctx)
		var lwg sync.WaitGroup
		if err := s.takeOver(lctx, term, &lwg); err != nil {
			s.log.Error("could not take over interaction leadership: resigning", "err", err)
			// takeOver may have set the term before its first save failed:
			// this instance must not answer as the leader with the state
			// it is about to forget (every token would be unknown).
			s.ha.mu.Lock()
			s.ha.term = nil
			s.ha.mu.Unlock()
			s.metrics.leader.Set(0)
			lcancel()
			lwg.Wait()
			ccancel()
			s.resign(term)
			s.forget()
			pause.For(ctx, time.Second)
			continue
		}
		resigned := false
		select {
		case <-term.Done():
			s.log.Error("interaction leadership lost (lease expired or taken): dropping the routing state, following again")
		case <-changed:
			s.log.Warn("interaction instance cut off from the chat cores: resigning the leadership")
			resigned = true
		case <-ctx.Done():
		}
		ccancel()
		s.ha.mu.Lock()
		s.ha.term = nil
		s.ha.mu.Unlock()
		s.metrics.leader.Set(0)
		lcancel()
		lwg.Wait()
		if ctx.Err() != nil {
			s.resign(term) // a clean stop hands over at once
			return
		}
		if resigned {
			s.resign(term)
		}
		s.forget()
	}
}

func (s *Server) resign(t Term) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), saveTimeout)
	defer cancel()
	if err := t.Resign(ctx); err != nil {
		s.log.Warn("resign interaction leadership", "err", err)
	}
}

// takeOver loads the saved state, restores it and starts routing.
func (s *Server) takeOver(ctx context.Context, term Term, wg *sync.WaitGroup) error {
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	raw, err := s.ha.store.Load(lctx)
	cancel()
	if err != nil {
		return err
	}
	var snap Snapshot
	if raw != nil {
		if err := json.Unmarshal(raw, &snap); err != nil {
			return fmt.Errorf("%w: decode saved state: %w", ErrBadState, err)
		}
	}
	s.mu.Lock()
	s.lead = ctx
	if raw != nil {
		if err := s.restoreLocked(snap); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	agents, chats, members := len(s.router.agents), len(s.router.chats), len(s.members)
	s.mu.Unlock()
	s.ha.mu.Lock()
	s.ha.term = term
	s.ha.mu.Unlock()
	if err := s.saveNow(ctx, true); err != nil {
		return err
	}
	s.startLeading(ctx, wg)
	took := time.Since(start)
	s.metrics.leader.Set(1)
	s.metrics.takeovers.Inc()
	s.metrics.takeoverSecs.Observe(took.Seconds())
	s.log.Info("took over interaction leadership", "restored", raw != nil, "saved_at", snap.Saved,
		"sessions", len(snap.Sessions), "agents", agents, "chats", chats, "participations", members, "took", took)
	return nil
}

// forget drops every bit of routing state after a term (or a failed
// takeover): the next leader has it.
func (s *Server) forget() {
	s.mu.Lock()
	for _, m := range s.members {
		m.gone = true
		m.cancel()
	}
	s.members = map[memberKey]*member{}
	s.byAgent = map[string]map[string]*member{}
	s.joining = map[memberKey]bool{}
	s.ended = map[string]map[string]endedPart{}
	s.router = NewRouter(s.cfg.MaxChatsPerAgent, s.cfg.OfferTimeout)
	s.coreUp, s.coreEver, s.refused = false, false, false
	s.lead = s.ctx
	s.mu.Unlock()
	_ = s.authn.sessions.Restore(nil)
	s.hub.closeAll()
}

// changedLocked records a change of the routing state; with now it saves
// before returning (an offer is saved before the agent hears of it).
// s.mu is held.
func (s *Server) changedLocked(now bool) {
	if s.ha.store == nil {
		return
	}
	if now {
		if t := s.currentTerm(); t != nil {
			ctx, cancel := context.WithTimeout(s.lead, saveTimeout)
			s.saveLocked(ctx, t, false)
			cancel()
			return
		}
	}
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// confirmLeading proves, by a fenced save of the routing state, that this
// instance still leads before it acts on the chat core (an accept's join);
// without a state store it always leads.
func (s *Server) confirmLeading(ctx context.Context) error {
	if s.ha.store == nil {
		return nil
	}
	if err := s.saveNow(ctx, true); err != nil {
		return fmt.Errorf("%w: %w", ErrCoreUnavailable, err)
	}
	return nil
}

// saveNow saves the routing state; it fails with ErrNotLeader when this
// instance does not lead. Without force a state equal to the last one this
// term saved is not written again.
func (s *Server) saveNow(ctx context.Context, force bool) error {
	t := s.currentTerm()
	if t == nil {
		return ErrNotLeader
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	return s.saveLocked(ctx, t, force)
}

func (s *Server) saveLocked(ctx context.Context, t Term, force bool) error {
	snap := s.snapshotLocked()
	raw, err := json.Marshal(snap) // Saved still zero: equal states give equal bytes
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	sum := sha256.Sum256(raw)
	if !force && t == s.ha.savedTerm && sum == s.ha.savedSum {
		s.metrics.stateSaves.WithLabelValues("unchanged").Inc()
		return nil
	}
	snap.Saved = s.now()
	if raw, err = json.Marshal(snap); err == nil {
		err = t.Save(ctx, raw)
	}
	switch {
	case err == nil:
		s.ha.savedTerm, s.ha.savedSum = t, sum
		s.metrics.stateSaves.WithLabelValues("ok").Inc()
	case errors.Is(err, ErrNotLeader):
		s.metrics.stateSaves.WithLabelValues("not_leader").Inc()
		s.log.Error("routing state save refused: no longer the interaction leader")
	default:
		s.metrics.stateSaves.WithLabelValues("error").Inc()
		s.log.Warn("routing state save failed", "err", err)
	}
	return err
}

// persister saves the state after changes (coalesced) and every
// persistEvery, while this instance leads.
func (s *Server) persister(ctx context.Context) {
	t := time.NewTicker(persistEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.dirty:
		case <-t.C:
		}
		if err := s.saveNow(ctx, false); err != nil && ctx.Err() == nil {
			pause.For(ctx, 100*time.Millisecond)
			select { // try again
			case s.dirty <- struct{}{}:
			default:
			}
		}
	}
}

// haFront puts the agent API behind the leadership: a follower forwards it
// to the leader; the leader answers a change (any POST) only once the state
// it leads to is saved, so that a token or an accepted offer it answered
// holds on whichever instance leads next.
func (s *Server) haFront(next http.Handler) http.Handler {
	if s.ha.store == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/agent/v1/") {
			next.ServeHTTP(w, r)
			return
		}
		if s.Leading() {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				next.ServeHTTP(w, r)
				return
			}
			bw := &bufferedWriter{header: http.Header{}, code: http.StatusOK}
			next.ServeHTTP(bw, r)
			if err := s.saveNow(r.Context(), false); err != nil {
				w.Header().Set("Retry-After", "1")
				writeErr(w, fmt.Errorf("%w: routing state not saved: %w", ErrCoreUnavailable, err))
				return
			}
			for k, v := range bw.header {
				w.Header()[k] = v
			}
			w.WriteHeader(bw.code)
			_, _ = w.Write(bw.body.Bytes())
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		leader, err := s.ha.store.Leader(ctx)
		cancel()
		if err != nil || leader == "" || leader == s.ha.addr {
			w.Header().Set("Retry-After", "1")
			writeErr(w, fmt.Errorf("%w: no interaction leader right now, retry", ErrNotLeader))
			return
		}
		p, err := s.proxyTo(leader)
		if err != nil {
			writeErr(w, fmt.Errorf("%w: leader address %q: %w", ErrCore, leader, err))
			return
		}
		p.ServeHTTP(w, r)
	})
}

// proxyTo returns the reverse proxy to the leader at base.
func (s *Server) proxyTo(base string) (*httputil.ReverseProxy, error) {
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	if p := s.ha.proxies[base]; p != nil {
		return p, nil
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.SetXForwarded()
		},
		Transport:     s.ha.transport,
		FlushInterval: -1, // the push channel
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.log.Warn("forwarding to the interaction leader failed", "leader", base, "path", r.URL.Path, "err", err)
			w.Header().Set("Retry-After", "1")
			writeErr(w, fmt.Errorf("%w: leader unreachable, retry", ErrNotLeader))
		},
	}
	if s.ha.proxies == nil {
		s.ha.proxies = map[string]*httputil.ReverseProxy{}
	}
	s.ha.proxies[base] = p
	return p, nil
}

// bufferedWriter holds a response until the state it reports is saved.
type bufferedWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
	wrote  bool
}

func (b *bufferedWriter) Header() http.Header { return b.header }

func (b *bufferedWriter) WriteHeader(code int) {
	if !b.wrote {
		b.code, b.wrote = code, true
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	b.wrote = true
	return b.body.Write(p)
}
