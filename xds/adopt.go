package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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

// decideLocked updates when each pair was first seen without a primary
// and returns the adoptions decided from the pairs last built and cur (nil
// with one pair: nobody to adopt it). s.mu is held.
func (s *Server) decideLocked(now time.Time, cur map[string]string) map[string]string {
	if s.good == nil || s.good.Pairs == nil {
		return nil
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
	return decideAdoptions(s.good.Pairs, s.degradedSince, now, s.cfg.AdoptGrace, cur)
}

// applyAdoptionsLocked makes next the adoptions this control plane routes
// by; it logs and counts every change and asks for a rebuild when they
// changed. s.mu is held.
func (s *Server) applyAdoptionsLocked(now time.Time, next map[string]string) {
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
// With Options.Adoptions the recorded adoptions are the current ones, the
// decision is recorded there, and what is recorded is routed by.
func (s *Server) adoptLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PairPoll)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		store := s.opts.Adoptions
		if store == nil {
			s.mu.Lock()
			if next := s.decideLocked(now, s.adopted); next != nil {
				s.applyAdoptionsLocked(now, next)
			}
			s.mu.Unlock()
			continue
		}
		actx, cancel := context.WithTimeout(ctx, max(s.cfg.PairPoll, time.Second))
		recorded, err := store.Adoptions(actx)
		if err == nil {
			s.mu.Lock()
			next := s.decideLocked(now, recorded)
			s.mu.Unlock()
			if next != nil && !maps.Equal(next, recorded) {
				recorded, err = syncAdoptions(actx, store, recorded, next)
			}
		}
		cancel()
		if err != nil {
			if !failing && ctx.Err() == nil {
				s.log.Warn("cannot read or record the adoptions at the coordination cluster; the last ones hold", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		s.mu.Lock()
		if s.good != nil && s.good.Pairs != nil {
			s.applyAdoptionsLocked(now, recorded)
		}
		s.mu.Unlock()
	}
}

// AdoptPrefix is the etcd key prefix of the adoptions: one key per adopted
// pair, AdoptPrefix + pair, whose value is the adopting pair.
const AdoptPrefix = "/hachat/pairs/adopted/"

// AdoptionStore keeps the adoptions where every control plane sees them,
// so that all route an adopted pair to the same adopter: the first
// control plane to decide records its choice, the others take it.
type AdoptionStore interface {
	// Adopt records by as p's adopter unless p has one, and returns the
	// adopter recorded.
	Adopt(ctx context.Context, p, by string) (string, error)
	// Release removes p's adoption if by is still its adopter.
	Release(ctx context.Context, p, by string) error
	// Adoptions returns every recorded adoption.
	Adoptions(ctx context.Context) (map[string]string, error)
}

// Adopt creates p's key with by unless it exists, and returns its value.
func (d *EtcdDrains) Adopt(ctx context.Context, p, by string) (string, error) {
	k := AdoptPrefix + p
	resp, err := d.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, by)).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return "", fmt.Errorf("record the adoption of pair %s at the coordination cluster: %w", p, err)
	}
	if resp.Succeeded {
		return by, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return "", fmt.Errorf("adoption of pair %s: %w", p, errAdoptionRace)
	}
	return string(kvs[0].Value), nil
}

// errAdoptionRace is an adoption key deleted between the compare and the read.
var errAdoptionRace = errors.New("the adoption changed meanwhile")

// Release deletes p's key if its value is still by.
func (d *EtcdDrains) Release(ctx context.Context, p, by string) error {
	k := AdoptPrefix + p
	_, err := d.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(k), "=", by)).Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		return fmt.Errorf("release the adoption of pair %s at the coordination cluster: %w", p, err)
	}
	return nil
}

// Adoptions reads every adoption key.
func (d *EtcdDrains) Adoptions(ctx context.Context) (map[string]string, error) {
	resp, err := d.cli.Get(ctx, AdoptPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the adoptions at the coordination cluster: %w", err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), AdoptPrefix)] = string(kv.Value)
	}
	return out, nil
}

// syncAdoptions makes the adoptions decided from recorded (next) the
// recorded ones at store, and returns what store holds afterwards: a
// choice another control plane recorded first wins.
func syncAdoptions(ctx context.Context, store AdoptionStore, recorded, next map[string]string) (map[string]string, error) {
	for p, by := range recorded {
		if next[p] != by {
			if err := store.Release(ctx, p, by); err != nil {
				return nil, err
			}
		}
	}
	for p, by := range next {
		if recorded[p] != by {
			if _, err := store.Adopt(ctx, p, by); err != nil {
				return nil, err
			}
		}
	}
	return store.Adoptions(ctx)
}
