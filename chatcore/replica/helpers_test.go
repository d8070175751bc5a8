package replica

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// testMetrics returns unregistered metrics.
func testMetrics() Metrics {
	return Metrics{
		Replicated: prometheus.NewCounter(prometheus.CounterOpts{Name: "replicated"}),
		Lag:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "lag"}),
		InSync:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "in_sync"}),
		Batch:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "batch"}),
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var errNotPrimary = errors.New("not primary")

// waitFor polls cond until it holds or 10 s passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeSession is a primary's session as the replicator sees it.
type fakeSession struct {
	id    string
	gen   atomic.Uint64
	saved uint64 // its save progress (set before the replicator sees it)
}

func (s *fakeSession) LinkGen() uint64       { return s.gen.Load() }
func (s *fakeSession) SetLinkGen(gen uint64) { s.gen.Store(gen) }
func (s *fakeSession) SaveProgress() *chatpb.SaveProgress {
	return &chatpb.SaveProgress{SessionId: s.id, SavedThrough: s.saved}
}

// fakeEntry is a backup's session: its events and save progress.
type fakeEntry struct {
	mu     sync.Mutex
	events []*chatpb.Event
	saved  uint64
}

func (e *fakeEntry) Lock()             { e.mu.Lock() }
func (e *fakeEntry) Unlock()           { e.mu.Unlock() }
func (e *fakeEntry) LastIndex() uint64 { return uint64(len(e.events)) }
func (e *fakeEntry) MergeProgressLocked(p *chatpb.SaveProgress) {
	e.saved = max(e.saved, p.SavedThrough)
}

// fakeTable is a backup's session table whose commit only appends.
type fakeTable struct {
	mu       sync.Mutex
	sessions map[string]*fakeEntry
	tombs    map[string]uint64
}

func newFakeTable() *fakeTable {
	return &fakeTable{sessions: map[string]*fakeEntry{}, tombs: map[string]uint64{}}
}

func (f *fakeTable) entry(id string) *fakeEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions[id]
}

func (f *fakeTable) Lookup(id string) Entry {
	if e := f.entry(id); e != nil {
		return e
	}
	return nil
}

func (f *fakeTable) Start(first *chatpb.Event) Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := &fakeEntry{}
	f.sessions[first.SessionId] = e
	return e
}

func (f *fakeTable) Put(snap *chatpb.SessionSnapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions[snap.SessionId] = &fakeEntry{events: snap.Events, saved: snap.SavedThrough}
}

func (f *fakeTable) Tombstone(id string, last uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tombs[id] = last
}

func (f *fakeTable) CommitLocked(e Entry, ev *chatpb.Event) {
	fe := e.(*fakeEntry)
	fe.events = append(fe.events, ev)
}

func (f *fakeTable) DropUnseen(seen map[string]bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for id := range f.sessions {
		if !seen[id] {
			delete(f.sessions, id)
			n++
		}
	}
	return n
}

// events returns the number of events the table holds for id (-1: none).
func (f *fakeTable) events(id string) int {
	e := f.entry(id)
	if e == nil {
		return -1
	}
	e.Lock()
	defer e.Unlock()
	return len(e.events)
}

func replEvent(seq uint64, sid string, idx uint64, kind chatpb.EventKind) *chatpb.ReplicaMsg {
	return &chatpb.ReplicaMsg{Seq: seq, Body: &chatpb.ReplicaMsg_Event{Event: &chatpb.Event{SessionId: sid, Index: idx, Kind: kind}}}
}
