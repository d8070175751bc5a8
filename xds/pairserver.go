package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/telemetry"
)

// Pair admin routes.
const (
	// PairsPath answers GET with every pair (PairsStatus).
	PairsPath = "/xds/v1/pairs"
	// PairDrainPath is POST /xds/v1/pairs/{pair}/drain (admin token):
	// the pair takes no new chat; its chats go on. DELETE undoes it.
	PairDrainPath = "/xds/v1/pairs/{pair}/drain"
)

// ErrOnlyPair refuses to drain the only pair of a cluster: new chats would
// have nowhere to go.
var ErrOnlyPair = errors.New("the only pair")

// PairLiveFunc asks the core at addr (its gRPC address) how many live
// sessions it holds.
type PairLiveFunc func(ctx context.Context, addr string) (uint64, error)

// PairsStatus is the answer of GET /xds/v1/pairs.
type PairsStatus struct {
	Version string     `json:"version"`
	Pairs   []PairInfo `json:"pairs"`
	// Draining lists the drained pairs, also those no core is in yet.
	Draining []string `json:"draining"`
}

// pairInputs returns what BuildPairs needs besides membership.
func (s *Server) pairInputs() PairInputs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return PairInputs{Live: maps.Clone(s.live), Draining: maps.Clone(s.draining), Capacity: s.cfg.PairCapacity,
		Arrivals: uint64(s.arrivals + 0.5), Adopted: maps.Clone(s.adopted)}
}

// kickLocked asks Run to rebuild; a pending kick covers this one.
func (s *Server) kickLocked() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// SetDraining drains pair p (on) or lets it take new chats again (off).
// A pair no core is in yet may be drained ahead: it joins drained. With
// Options.Drains the drain list lives there (every control plane watches
// it, and it outlives a restart); without, in this control plane only.
// Draining the only pair of the cluster is refused (ErrOnlyPair).
func (s *Server) SetDraining(ctx context.Context, p string, on bool) error {
	if err := pairs.Validate(p); err != nil {
		return err
	}
	s.mu.Lock()
	if on && s.good != nil && s.good.Pairs == nil && p == pairs.Default {
		s.mu.Unlock()
		return fmt.Errorf("%w: pair %s is the cluster's only pair: new chats would have nowhere to go (add a pair first)", ErrOnlyPair, p)
	}
	if s.opts.Drains == nil {
		s.applyDrainLocked(p, on)
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if err := s.opts.Drains.SetDraining(ctx, p, on); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyDrainLocked(p, on) // the watch brings it too; the answer shows it now
	return nil
}

// applyDrainLocked sets p's drain in this control plane and asks for a
// rebuild when it changed. s.mu is held.
func (s *Server) applyDrainLocked(p string, on bool) {
	if s.draining[p] == on {
		return
	}
	if on {
		s.draining[p] = true
		s.log.Warn("pair draining: it takes no new chat; its chats go on", "pair", p, "live", s.live[p])
	} else {
		delete(s.draining, p)
		s.log.Info("pair no longer draining: it takes new chats again", "pair", p)
	}
	s.kickLocked()
}

// watchDrains applies the drain list of Options.Drains until ctx ends.
func (s *Server) watchDrains(ctx context.Context) {
	for list := range s.opts.Drains.Watch(ctx) {
		s.mu.Lock()
		for p := range s.draining {
			if !list[p] {
				s.applyDrainLocked(p, false)
			}
		}
		for p := range list {
			if pairs.Validate(p) == nil {
				s.applyDrainLocked(p, true)
			}
		}
		s.mu.Unlock()
	}
}

// Pairs reports the pairs of the served resources.
func (s *Server) Pairs() PairsStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := PairsStatus{Pairs: []PairInfo{}, Draining: slices.Sorted(maps.Keys(s.draining))}
	if s.good == nil {
		return st
	}
	st.Version = s.good.Version
	if s.good.Pairs != nil {
		st.Pairs = slices.Clone(s.good.Pairs)
		return st
	}
	// One pair (the default one): its state, without weights.
	info := PairInfo{Name: pairs.Default, State: PairServing, Primary: s.good.Primary, Live: s.live[pairs.Default],
		Cluster: ClusterName, Listener: ListenerName, Cores: s.good.Placements}
	switch {
	case s.draining[pairs.Default]:
		info.State = PairDraining
	case s.good.Primary == "":
		info.State = PairDegraded
	}
	st.Pairs = append(st.Pairs, info)
	return st
}

// pairChangesLocked logs and counts what changed between two builds' pairs:
// a pair joined, left, degraded, serves again, drained its last chat.
func (s *Server) pairChangesLocked(prev, cur *Resources) {
	before := map[string]PairInfo{}
	if prev != nil {
		for _, p := range prev.Pairs {
			before[p.Name] = p
		}
	}
	s.met.pairs.Reset()
	for _, p := range cur.Pairs {
		s.met.pairs.WithLabelValues(p.Name, p.State).Set(1)
		s.met.pairLive.WithLabelValues(p.Name).Set(float64(p.Live))
		s.met.pairWeight.WithLabelValues(p.Name).Set(float64(p.Weight))
		old, known := before[p.Name]
		delete(before, p.Name)
		switch {
		case !known && prev != nil:
			s.log.Info("pair joined: it takes new chats when serving", "pair", p.Name, "state", p.State, "primary", p.Primary, "cores", len(p.Cores))
		case !known:
		case old.State != p.State && p.State == PairDegraded:
			s.log.Warn("pair degraded: no alive primary, it takes no new chat", "pair", p.Name, "was", old.State, "live", p.Live)
		case old.State != p.State:
			s.log.Info("pair state changed", "pair", p.Name, "from", old.State, "to", p.State, "primary", p.Primary)
		}
		if p.State == PairDraining && p.Live == 0 && (old.Live > 0 || old.State != PairDraining) {
			s.log.Info("pair drained: its last chat ended", "pair", p.Name)
		}
	}
	for name := range before {
		s.met.pairLive.DeleteLabelValues(name)
		s.met.pairWeight.DeleteLabelValues(name)
		s.log.Warn("pair gone: no core of it is in the cluster", "pair", name)
	}
}

// pollPairs asks each pair's primary for its live sessions every poll
// interval while the cluster runs several pairs, and kicks a rebuild when
// a count changed, until ctx ends.
func (s *Server) pollPairs(ctx context.Context) {
	every := s.cfg.PairPoll
	live := s.opts.PairLive
	var dialer *statusDialer
	if live == nil {
		dialer = newStatusDialer(s.tel, s.tls)
		defer dialer.close()
		live = dialer.live
	}
	t := time.NewTicker(every)
	defer t.Stop()
	failing := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ps := s.Pairs().Pairs // with one pair too: ctl pairs shows its live chats
		got := map[string]uint64{}
		var asked []string
		for _, p := range ps {
			addr := ""
			for _, c := range p.Cores {
				if c.Name == p.Primary {
					addr = c.Addr
				}
			}
			if addr == "" {
				continue // degraded: keep its last count
			}
			asked = append(asked, addr)
			qctx, cancel := context.WithTimeout(ctx, max(every, time.Second))
			n, err := live(qctx, addr)
			cancel()
			if err != nil {
				if !failing[p.Name] && ctx.Err() == nil {
					s.log.Warn("cannot read a pair's live sessions; its weight keeps the last count", "pair", p.Name, "primary", p.Primary, "err", err)
				}
				failing[p.Name] = true
				continue
			}
			failing[p.Name] = false
			got[p.Name] = n
		}
		if dialer != nil {
			dialer.keepOnly(asked) // a former primary's connection is not needed
		}
		s.mu.Lock()
		var growth float64
		for name, n := range got {
			if old, ok := s.live[name]; ok && n > old {
				growth += float64(n - old)
			}
		}
		before := uint64(s.arrivals + 0.5)
		s.arrivals = max(growth, (s.arrivals+growth)/2) // a burst counts at once, a lull fades
		changed := uint64(s.arrivals+0.5) != before     // the weights' floor moved
		for name, n := range got {
			if old, ok := s.live[name]; !ok || old != n {
				s.live[name] = n
				changed = true
			}
		}
		if changed {
			s.kickLocked()
		}
		s.mu.Unlock()
	}
}

// statusDialer keeps one gRPC connection per core for the live-session
// polls.
type statusDialer struct {
	tel *telemetry.Telemetry
	src *mtls.Source

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newStatusDialer(tel *telemetry.Telemetry, src *mtls.Source) *statusDialer {
	return &statusDialer{tel: tel, src: src, conns: map[string]*grpc.ClientConn{}}
}

func (d *statusDialer) live(ctx context.Context, addr string) (uint64, error) {
	d.mu.Lock()
	conn, ok := d.conns[addr]
	if !ok {
		creds := insecure.NewCredentials()
		if d.src != nil {
			creds = credentials.NewTLS(d.src.ClientConfig(mtls.Allow(mtls.KindCore)))
		}
		var err error
		conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
			grpc.WithStatsHandler(otelgrpc.NewClientHandler(
				otelgrpc.WithTracerProvider(d.tel.Tracer), otelgrpc.WithPropagators(d.tel.Propagator))))
		if err != nil {
			d.mu.Unlock()
			return 0, fmt.Errorf("dial core %s: %w", addr, err)
		}
		d.conns[addr] = conn
	}
	d.mu.Unlock()
	st, err := chatpb.NewChatClient(conn).Status(ctx, &chatpb.StatusRequest{})
	if err != nil {
		return 0, fmt.Errorf("status of core %s: %w", addr, err)
	}
	return st.GetLiveSessions(), nil
}

// keepOnly closes the connections to cores other than addrs.
func (d *statusDialer) keepOnly(addrs []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for a, c := range d.conns {
		if !slices.Contains(addrs, a) {
			_ = c.Close()
			delete(d.conns, a)
		}
	}
}

func (d *statusDialer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		_ = c.Close()
	}
}

// pairHandlers mounts the pair routes on mux.
func (s *Server) pairHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PairsPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Pairs())
	})
	drain := func(on bool) http.HandlerFunc {
		return s.admin(func(w http.ResponseWriter, r *http.Request) {
			p := r.PathValue("pair")
			if err := s.SetDraining(r.Context(), p, on); err != nil {
				code := http.StatusInternalServerError
				switch {
				case errors.Is(err, pairs.ErrBadName):
					code = http.StatusBadRequest
				case errors.Is(err, ErrOnlyPair):
					code = http.StatusConflict
				}
				writeJSON(w, code, apiError{err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, s.Pairs())
		})
	}
	mux.HandleFunc("POST "+PairDrainPath, drain(true))
	mux.HandleFunc("DELETE "+PairDrainPath, drain(false))
}
