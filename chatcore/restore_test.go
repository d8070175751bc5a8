package chatcore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/chatcore/saver"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// fakeRestorerCore is the core as the restorer sees it (restorerCore),
// without a Core: a session table, appends that commit at once (their
// second copy is taken for granted), and a record of what the restorer
// asked of the role.
type fakeRestorerCore struct {
	role *role.State

	mu     sync.Mutex
	table  map[string]*session
	stale  bool     // the replica may miss acknowledged events
	opened int      // finishRestoring calls that opened the core
	downs  []uint64 // stepDown's newer epochs
}

func (f *fakeRestorerCore) all() []*session {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*session, 0, len(f.table))
	for _, s := range f.table {
		out = append(out, s)
	}
	return out
}

func (f *fakeRestorerCore) session(id string) *session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.table[id]
}

func (f *fakeRestorerCore) putSession(s *session) {
	f.mu.Lock()
	old := f.table[s.id]
	f.table[s.id] = s
	f.mu.Unlock()
	if old != nil {
		old.mu.Lock()
		old.removed = true
		old.mu.Unlock()
	}
}

func (f *fakeRestorerCore) appendUncopied(_ context.Context, s *session, prepare prepareFunc) error {
	if !f.role.IsPrimary() {
		return errNotPrimary
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return status.Error(codes.NotFound, "unknown session")
	}
	ev, dup, err := prepare(&s.log.State)
	if err != nil || dup != 0 {
		return err
	}
	ev.SessionId, ev.Index, ev.Epoch = s.id, s.lastIndex()+1, f.role.Epoch()
	s.log.Commit(ev)
	return nil
}

func (f *fakeRestorerCore) commitLocked(s *session, ev *chatpb.Event) { s.log.Commit(ev) }
func (f *fakeRestorerCore) toBackup(*session)                         {}

func (f *fakeRestorerCore) replicaStale() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stale
}

func (f *fakeRestorerCore) replicaMerged() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stale = false
}

func (f *fakeRestorerCore) finishRestoring() {
	if f.role.FinishRestoring(func() {}) {
		f.mu.Lock()
		f.opened++
		f.mu.Unlock()
	}
}

func (f *fakeRestorerCore) stepDown(_ string, newer uint64) {
	f.role.StepDown(newer, func() {})
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downs = append(f.downs, newer)
}

// fakeRestoreStore is UCS as the restorer reads it: transcripts, some of
// which it fails to give, and the number of reads of each.
type fakeRestoreStore struct {
	mu     sync.Mutex
	chats  map[string]*Transcript
	down   map[string]bool // Transcript of these fails with ErrUnavailable
	reads  int             // Transcript calls
	listed int             // Chats calls
}

func (st *fakeRestoreStore) Transcript(_ context.Context, id string) (*Transcript, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.reads++
	if st.down[id] {
		return nil, fmt.Errorf("injected: %w", ErrUnavailable)
	}
	tr, ok := st.chats[id]
	if !ok {
		return nil, ErrNotFound
	}
	out := &Transcript{ChatID: id, Ended: tr.Ended}
	for _, ev := range tr.Events { // the restorer keeps what it reads
		out.Events = append(out.Events, proto.Clone(ev).(*chatpb.Event))
	}
	return out, nil
}

func (st *fakeRestoreStore) Epoch(context.Context, string) (Epoch, error) {
	return Epoch{}, fmt.Errorf("epochs are the fencer's here: %w", ErrUnavailable)
}

func (st *fakeRestoreStore) ClaimEpoch(context.Context, string, uint64, uint64, string) (Epoch, error) {
	return Epoch{}, fmt.Errorf("epochs are the fencer's here: %w", ErrUnavailable)
}

func (st *fakeRestoreStore) setDown(id string, down bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.down[id] = down
}

func (st *fakeRestoreStore) readCount() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.reads
}

// listingRestoreStore is a fakeRestoreStore that lists its chats in one
// call (a ChatLister, as ucsmock's client is).
type listingRestoreStore struct{ *fakeRestoreStore }

func (st listingRestoreStore) Chats(_ context.Context, f ChatFilter) ([]ChatInfo, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.listed++
	var out []ChatInfo
	for id, tr := range st.chats {
		info := ChatInfo{ChatID: id, Service: f.Service, Ended: tr.Ended}
		for _, ev := range tr.Events {
			info.HighestIndex = max(info.HighestIndex, ev.Index)
		}
		out = append(out, info)
	}
	return out, nil
}

// fakeSaveQueue records the sessions whose saves the restorer resumed.
type fakeSaveQueue struct {
	mu  sync.Mutex
	ids []string
}

func (q *fakeSaveQueue) Enqueue(s saver.Session) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ids = append(q.ids, s.ID())
}

func (q *fakeSaveQueue) got() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := slices.Clone(q.ids)
	sort.Strings(out)
	return out
}

// chatEvents is a chat as the old primary logged it: started, the customer
// and an agent joined, then one message per text (indexes from 1, epoch 1).
func chatEvents(id string, texts ...string) []*chatpb.Event {
	evs := []*chatpb.Event{
		{Kind: chatpb.EventKind_EVENT_KIND_SESSION_STARTED, From: systemParticipant, Attrs: map[string]string{"service": "svc"}},
		{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pCust, KeyHash: "h"},
		{Kind: chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED, From: pAgent, KeyHash: "h"},
	}
	for _, text := range texts {
		evs = append(evs, &chatpb.Event{Kind: chatpb.EventKind_EVENT_KIND_MESSAGE, From: pCust, Text: text})
	}
	for i, ev := range evs {
		ev.SessionId, ev.Index, ev.Epoch, ev.UtcUnixMs = id, uint64(i+1), 1, 1000+int64(i)
	}
	return evs
}

// without returns evs without the event at index i (UCS left it out).
func without(evs []*chatpb.Event, i uint64) []*chatpb.Event {
	return slices.DeleteFunc(slices.Clone(evs), func(ev *chatpb.Event) bool { return ev.Index == i })
}

// logSummary is a session's log as short strings: the kind, then the text
// of a message, the noticeType of a notice or the reason of the events a
// restoration appends.
func logSummary(s *session) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i, e := range s.log.Entries() {
		ev := e.Ev
		if ev.Index != uint64(i+1) {
			return append(out, fmt.Sprintf("index %d at position %d", ev.Index, i+1))
		}
		w := kindName(ev.Kind)
		switch {
		case ev.Text != "":
			w += ":" + ev.Text
		case ev.Attrs["noticeType"] != "":
			w += ":" + ev.Attrs["noticeType"]
		case ev.Attrs["reason"] != "":
			w += "/" + ev.Attrs["reason"]
		}
		out = append(out, w)
	}
	return out
}

// TestRestorerAlone runs restoration without a Core, a pair, gossip or
// etcd: a fake core (restorerCore), a fake UCS and a fake save queue. A
// new primary restores what its replica holds, merges first what UCS holds
// beyond a stale replica, rebuilds a session only UCS holds on its first
// lookup, never rebuilds a session closed without a complete transcript,
// and leaves nothing half done when UCS fails.
func TestRestorerAlone(t *testing.T) {
	started := []string{"SESSION_STARTED", "PARTICIPANT_JOINED", "PARTICIPANT_JOINED"}
	notices := func(reason string) []string {
		d, r := "PARTICIPANT_DISCONNECTED/"+reason, "PARTICIPANT_RECONNECTED/"+reason
		return []string{d, d, r, r} // the customer and the agent, each
	}
	log := func(parts ...[]string) []string { return slices.Concat(parts...) }
	msgs := func(texts ...string) []string {
		out := make([]string, len(texts))
		for i, s := range texts {
			out[i] = "MESSAGE:" + s
		}
		return out
	}
	refuse := status.Error(codes.PermissionDenied, "wrong key")

	cases := []struct {
		name     string
		replica  map[string][]*chatpb.Event // the sessions this core holds
		ucs      map[string][]*chatpb.Event // transcripts at UCS
		ucsEnded []string                   // transcripts a save marked ended
		list     bool                       // the store lists its chats (ChatLister)
		down     []string                   // chats UCS fails to give
		tombs    []string                   // sessions closed here without a complete transcript in UCS
		stale    bool                       // the replica may miss acknowledged events
		unmerged bool                       // primary, not serving until the merge
		backup   bool                       // this core is not primary
		mode     string                     // session-restoration-mode (default simple)
		source   string                     // all's source (default replica)
		lookup   string                     // look this session up instead of restoring all
		admit    error                      // the lookup's admit refuses with it
		giveUp   time.Duration              // the restoration's context ends after this

		wantN        int                 // all's count
		wantErr      codes.Code          // the lookup's
		want         map[string][]string // logs of the sessions in the table after
		absent       []string            // sessions not in the table after
		serving      bool                // the core serves after
		stillStale   bool                // the replica is still marked stale after
		saves        []string            // sessions whose saves resumed
		reads        int                 // transcripts read at UCS (-1: any)
		restored     map[string]float64  // hachat_core_restored_sessions_total by source
		savedThrough map[string]uint64   // save progress of sessions rebuilt from UCS
	}{
		{
			name:    "replica only: notices, saves resume, UCS not read",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1", "hi")},
			ucs:     map[string][]*chatpb.Event{"s1": chatEvents("s1")},
			list:    true,
			wantN:   1, serving: true, saves: []string{"s1"},
			want:     map[string][]string{"s1": log(started, msgs("hi"), notices("failover"))},
			restored: map[string]float64{"replica": 1},
		},
		{
			name:    "switchover: the notices say so",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1", "hi")},
			source:  "switchover",
			wantN:   1, serving: true, saves: []string{"s1"},
			want: map[string][]string{"s1": log(started, msgs("hi"), notices("switchover"))},
		},
		{
			name:    "stale replica, UCS ahead: merged before serving",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1", "a")},
			ucs:     map[string][]*chatpb.Event{"s1": chatEvents("s1", "a", "b", "c")},
			list:    true, stale: true, unmerged: true,
			wantN: 1, serving: true, saves: []string{"s1"}, reads: 1,
			want:     map[string][]string{"s1": log(started, msgs("a", "b", "c"), notices("failover"))},
			restored: map[string]float64{"replica+ucs": 1},
		},
		{
			name:    "stale replica, no listing: every session read, a gap UCS left becomes a placeholder",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1"), "s2": chatEvents("s2", "x")},
			ucs:     map[string][]*chatpb.Event{"s1": without(chatEvents("s1", "a", "b", "c"), 5), "s2": chatEvents("s2", "x")},
			stale:   true, unmerged: true,
			wantN: 2, serving: true, saves: []string{"s1", "s2"}, reads: 2,
			want: map[string][]string{
				"s1": log(started, msgs("a"), []string{"NOTICE:omitted"}, msgs("c"), notices("failover")),
				"s2": log(started, msgs("x"), notices("failover")),
			},
		},
		{
			name:    "stale replica of a primary already serving: merged session by session",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1", "a")},
			ucs:     map[string][]*chatpb.Event{"s1": chatEvents("s1", "a", "b")},
			stale:   true,
			wantN:   1, serving: true, saves: []string{"s1"}, reads: 1,
			want: map[string][]string{"s1": log(started, msgs("a", "b"), notices("failover"))},
		},
		{
			name:    "sessions only UCS holds, listed: rebuilt, except the ended and the tombstoned",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1")},
			ucs: map[string][]*chatpb.Event{"s1": chatEvents("s1"), "s2": chatEvents("s2", "x"),
				"s3": chatEvents("s3", "y"), "s4": chatEvents("s4", "z")},
			ucsEnded: []string{"s3"}, tombs: []string{"s4"}, list: true,
			wantN: 2, serving: true, saves: []string{"s1"}, reads: 1,
			want: map[string][]string{
				"s1": log(started, notices("failover")),
				"s2": log(started, msgs("x"), notices("failover")),
			},
			absent:       []string{"s3", "s4"},
			restored:     map[string]float64{"replica": 1, "ucs": 1},
			savedThrough: map[string]uint64{"s2": 4},
		},
		{
			name:   "a session only UCS holds: rebuilt on its first lookup",
			ucs:    map[string][]*chatpb.Event{"s2": chatEvents("s2", "x")},
			lookup: "s2",
			reads:  1, serving: true,
			want:         map[string][]string{"s2": log(started, msgs("x"), notices("failover"))},
			restored:     map[string]float64{"ucs": 1},
			savedThrough: map[string]uint64{"s2": 4},
		},
		{
			name:   "closed here without a complete transcript: never rebuilt from UCS",
			ucs:    map[string][]*chatpb.Event{"s3": chatEvents("s3", "x")},
			tombs:  []string{"s3"},
			lookup: "s3", wantErr: codes.FailedPrecondition, serving: true,
			absent: []string{"s3"},
		},
		{
			name:   "UCS fails the lookup: UNAVAILABLE, nothing taken in",
			ucs:    map[string][]*chatpb.Event{"s2": chatEvents("s2", "x")},
			down:   []string{"s2"},
			lookup: "s2", wantErr: codes.Unavailable, serving: true, reads: 1,
			absent: []string{"s2"},
		},
		{
			name:    "UCS fails during the merge: not serving, no notices, the replica still stale",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1", "a"), "s2": chatEvents("s2", "a")},
			ucs:     map[string][]*chatpb.Event{"s1": chatEvents("s1", "a", "b"), "s2": chatEvents("s2", "a", "b")},
			down:    []string{"s2"},
			list:    true, stale: true, unmerged: true, giveUp: 300 * time.Millisecond,
			wantN: 0, serving: false, stillStale: true, reads: -1, // retried until the context ends
			want: map[string][]string{
				"s1": log(started, msgs("a", "b")), // a merge is whole or nothing, per session
				"s2": log(started, msgs("a")),
			},
		},
		{
			name:   "the caller is refused: no session, no notices, no count",
			ucs:    map[string][]*chatpb.Event{"s2": chatEvents("s2", "x")},
			lookup: "s2", admit: refuse, wantErr: codes.PermissionDenied, serving: true, reads: 1,
			absent: []string{"s2"}, restored: map[string]float64{},
		},
		{
			name:   "a backup knows only what it holds",
			ucs:    map[string][]*chatpb.Event{"s2": chatEvents("s2", "x")},
			backup: true, lookup: "s2", wantErr: codes.NotFound,
			absent: []string{"s2"},
		},
		{
			name:    "session-restoration-mode none: sessions end",
			replica: map[string][]*chatpb.Event{"s1": chatEvents("s1", "hi")},
			mode:    RestorationNone,
			wantN:   1, serving: true, saves: []string{"s1"},
			want: map[string][]string{"s1": log(started, msgs("hi"), []string{"SESSION_ENDED/failover"})},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := role.New()
			if !tc.backup {
				rs.BecomePrimary(2, !tc.unmerged, func() {})
			}
			core := &fakeRestorerCore{role: rs, table: map[string]*session{}, stale: tc.stale}
			for id, evs := range tc.replica {
				s := newSession(id)
				for _, ev := range evs {
					s.log.Commit(ev)
				}
				core.table[id] = s
			}
			st := &fakeRestoreStore{chats: map[string]*Transcript{}, down: map[string]bool{}}
			for id, evs := range tc.ucs {
				st.chats[id] = &Transcript{ChatID: id, Events: evs, Ended: slices.Contains(tc.ucsEnded, id)}
			}
			for _, id := range tc.down {
				st.down[id] = true
			}
			var store restoreStore = st
			if tc.list {
				store = listingRestoreStore{st}
			}
			discard := slog.New(slog.NewTextHandler(io.Discard, nil))
			tombs := &tombstones{gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tombstones"}), log: discard}
			for _, id := range tc.tombs {
				tombs.add(id, 9)
			}
			mode := tc.mode
			if mode == "" {
				mode = RestorationSimple
			}
			queue := &fakeSaveQueue{}
			restored := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "restored"}, []string{"source"})
			r := &restorer{core: core, store: store, saves: queue, role: rs, tombs: tombs, adopted: &adoptions{},
				spawn:   func(func(context.Context)) bool { return false },
				cluster: "svc", name: "core-b", mode: mode, epochsAtUCS: true,
				restored: restored, log: discard, tracer: noop.NewTracerProvider().Tracer(""), now: time.Now,
				busy: map[string]chan struct{}{}}

			ctx := ctxT(t)
			if tc.giveUp > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.giveUp)
				defer cancel()
			}
			if tc.lookup == "" {
				source := tc.source
				if source == "" {
					source = "replica"
				}
				if n := r.all(ctx, source); n != tc.wantN {
					t.Errorf("all restored %d sessions, want %d", n, tc.wantN)
				}
			} else {
				var admit func(*sessionlog.State) error
				if tc.admit != nil {
					admit = func(*sessionlog.State) error { return tc.admit }
				}
				s, err := r.lookup(ctx, tc.lookup, admit)
				if got := status.Code(err); got != tc.wantErr {
					t.Fatalf("lookup %s: %v, want %v", tc.lookup, err, tc.wantErr)
				}
				if err == nil && s != core.session(tc.lookup) {
					t.Errorf("lookup returned a session the table does not hold")
				}
			}

			for id, want := range tc.want {
				s := core.session(id)
				if s == nil {
					t.Errorf("%s not in the table", id)
					continue
				}
				if got := logSummary(s); !slices.Equal(got, want) {
					t.Errorf("%s log\n got %v\nwant %v", id, got, want)
				}
			}
			for _, id := range tc.absent {
				if core.session(id) != nil {
					t.Errorf("%s taken into the table", id)
				}
			}
			if got := rs.IsPrimary() && !rs.Unmerged(); got != tc.serving {
				t.Errorf("serving %v, want %v", got, tc.serving)
			}
			if got := core.replicaStale(); got != tc.stillStale {
				t.Errorf("replica stale %v after, want %v", got, tc.stillStale)
			}
			if got := queue.got(); !slices.Equal(got, tc.saves) {
				t.Errorf("saves resumed for %v, want %v", got, tc.saves)
			}
			if got := st.readCount(); tc.reads >= 0 && got != tc.reads {
				t.Errorf("%d transcripts read at UCS, want %d", got, tc.reads)
			}
			for _, source := range []string{"replica", "replica+ucs", "ucs"} {
				if got := counterValue(restored.WithLabelValues(source)); tc.restored != nil && got != tc.restored[source] {
					t.Errorf("restored{source=%q} %v, want %v", source, got, tc.restored[source])
				}
			}
			for id, want := range tc.savedThrough {
				if s := core.session(id); s != nil && s.save.SavedThrough != want {
					t.Errorf("%s saved through %d, want %d (what UCS holds)", id, s.save.SavedThrough, want)
				}
			}
			if len(core.downs) != 0 {
				t.Errorf("stepped down (%v)", core.downs)
			}
			r.mu.Lock()
			busy := len(r.busy)
			r.mu.Unlock()
			if busy != 0 {
				t.Errorf("%d sessions still marked as being rebuilt", busy)
			}

			// A session the lookup rebuilt is the table's now: the next
			// lookup finds it without asking UCS. One UCS failed to give is
			// rebuilt once UCS answers.
			if tc.lookup != "" && (tc.wantErr == codes.OK || tc.wantErr == codes.Unavailable) {
				st.setDown(tc.lookup, false)
				first := core.session(tc.lookup)
				reads := st.readCount()
				s, err := r.lookup(ctx, tc.lookup, nil)
				if err != nil {
					t.Fatalf("second lookup of %s: %v", tc.lookup, err)
				}
				if first != nil && (s != first || st.readCount() != reads) {
					t.Errorf("second lookup rebuilt %s again (%d reads)", tc.lookup, st.readCount()-reads)
				}
			}
		})
	}
}
