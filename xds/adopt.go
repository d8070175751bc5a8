package xds

import (
	"context"
	"maps"
	"slices"
	"time"
)

// N+1 (issue 10, point 5): a pair with no primary of its own for longer
// than Config.AdoptGrace (both its cores lost) is assigned to an adopting
// pair, the least loaded serving one. The adopted pair's header route and
// its sidecar listener then lead to the adopter's cluster; the adopter's
// primary, on the first request about a chat of the adopted pair, claims
// that pair's epoch (only once its lease is silent) and restores its live
// chats from UCS (chatcore/adopt.go). The assignment is only routing: the
// fencing that makes one adopter at a time is the adopted pair's epoch.

// decideAdoptions returns the adoptions (adopted pair -> adopter) given the
// pairs as last built, when each pair was first seen without a primary
// (since; absent: it has one), the time now, the grace and the current
// adoptions. An adoption holds while its pair has no primary and its
// adopter has one (a pair whose own core became primary again takes its
// chats back: that happens only once the adopter released or lost the
// pair's epoch); a pair degraded for grace or longer and not adopted is
// given to the serving pair (not draining, not degraded, not adopted
// itself) with the fewest live sessions, counting what it adopted in this
// call; ties go to the first in pair order. grace <= 0 turns N+1 off.
func decideAdoptions(infos []PairInfo, since map[string]time.Time, now time.Time, grace time.Duration, cur map[string]string) map[string]string {
	out := map[string]string{}
	if grace <= 0 {
		return out
	}
	byName := map[string]PairInfo{}
	for _, p := range infos {
		byName[p.Name] = p
	}
	hasPrimary := func(name string) bool {
		p, ok := byName[name]
		return ok && p.State != PairDegraded
	}
	for p, by := range cur {
		if !hasPrimary(p) && hasPrimary(by) {
			out[p] = by
		}
	}
	load := map[string]uint64{}
	for _, p := range infos {
		load[p.Name] = p.Live
	}
	for p, by := range out {
		load[by] += byName[p].Live
	}
	for _, p := range infos {
		if p.State != PairDegraded || out[p.Name] != "" {
			continue
		}
		at, ok := since[p.Name]
		if !ok || now.Sub(at) < grace {
			continue
		}
		best := ""
		for _, q := range infos {
			if q.State != PairServing || q.Name == p.Name || out[q.Name] != "" {
				continue
			}
			if best == "" || load[q.Name] < load[best] {
				best = q.Name
			}
		}
		if best != "" {
			out[p.Name] = best
			load[best] += p.Live
		}
	}
	return out
}

// adoptLocked updates when each pair was first seen without a primary and
// the adoptions, from the pairs last built; it logs and counts every
// change and asks for a rebuild when the adoptions changed. s.mu is held.
func (s *Server) adoptLocked(now time.Time) {
	if s.good == nil || s.good.Pairs == nil {
		return // one pair: nobody to adopt it
	}
	seen := map[string]bool{}
	for _, p := range s.good.Pairs {
		seen[p.Name] = true
		if p.State != PairDegraded {
			delete(s.degradedSince, p.Name)
		} else if _, ok := s.degradedSince[p.Name]; !ok {
			s.degradedSince[p.Name] = now
		}
	}
	for p := range s.degradedSince {
		if !seen[p] {
			delete(s.degradedSince, p)
		}
	}
	next := decideAdoptions(s.good.Pairs, s.degradedSince, now, s.cfg.AdoptGrace, s.adopted)
	if maps.Equal(next, s.adopted) {
		return
	}
	for _, p := range slices.Sorted(maps.Keys(s.adopted)) {
		if by := s.adopted[p]; next[p] != by {
			s.met.pairAdopted.DeleteLabelValues(p, by)
			s.log.Warn("pair adoption ended", "pair", p, "adopted_by", by, "now_by", next[p])
		}
	}
	for _, p := range slices.Sorted(maps.Keys(next)) {
		if by := next[p]; s.adopted[p] != by {
			s.met.pairAdopted.WithLabelValues(p, by).Set(1)
			s.met.adoptions.Inc()
			s.log.Warn("pair adopted: it has had no primary for the grace; its chats are routed to the adopting pair, which restores them from UCS",
				"pair", p, "adopted_by", by, "degraded_for", now.Sub(s.degradedSince[p]).Round(time.Millisecond), "grace", s.cfg.AdoptGrace)
		}
	}
	s.adopted = next
	s.kickLocked()
}

// adoptLoop decides the adoptions every poll interval until ctx ends.
func (s *Server) adoptLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PairPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			s.adoptLocked(now)
			s.mu.Unlock()
		}
	}
}
