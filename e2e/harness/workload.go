package harness

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/ucsmock"
)

// ViewEvent is one event as a participant (or the UCS transcript) shows it,
// reduced to what the checker needs. Type uses the customer API's names
// (Message, ParticipantDisconnected, ParticipantReconnected, ...).
type ViewEvent struct {
	Index           uint64
	Type            string
	Text            string
	ClientMessageID string
}

// Side is one participant of a workload session, behind whatever API it
// uses (the customer API, the agent API).
type Side interface {
	// Viewer: Name labels the side in texts and reports ("customer",
	// "agent"); View returns every event this side sees, in order. through
	// is the highest index acknowledged in the session: a side fed by a push
	// channel waits (within ctx) until it has seen that far.
	Viewer
	// Send sends one message once. It returns the index the message got, or
	// an error; retryable says whether the same send (same client message
	// id) may be tried again.
	Send(ctx context.Context, text, clientMessageID string) (index uint64, retryable bool, err error)
}

// Session is one chat in a workload and the sides that send in it.
type Session struct {
	ChatID string
	Sides  []Side
	// Watchers are views that do not send (the customer's push channel);
	// the checker holds them to the same rules as the sides.
	Watchers []Viewer
	// Customer and Agent are the clients behind the sides, and Push the
	// customer's push channel, when StartSessions made them.
	Customer *Chat
	Agent    *Agent
	Push     *PushWatcher
}

// WorkloadOptions tunes a workload.
type WorkloadOptions struct {
	// Messages each side sends (default 20).
	Messages int
	// Interval between one side's sends (default 20ms).
	Interval time.Duration
	// RetryFor bounds how long one message is resent (same client message
	// id) while the answer is retryable (default 30s). Past it the message
	// counts as not acknowledged and the side moves on.
	RetryFor time.Duration
	// RetryDelay is the pause between resends (default 50ms).
	RetryDelay time.Duration
}

func (o *WorkloadOptions) fill() {
	if o.Messages <= 0 {
		o.Messages = 20
	}
	if o.Interval <= 0 {
		o.Interval = 20 * time.Millisecond
	}
	if o.RetryFor <= 0 {
		o.RetryFor = 30 * time.Second
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 50 * time.Millisecond
	}
}

// Sent records one numbered message of a workload.
type Sent struct {
	ChatID   string
	Side     string
	Seq      int
	Text     string
	CMID     string
	Acked    bool
	Index    uint64
	Attempts int
	Err      error // the last error when not acknowledged
	At       time.Time
}

// Workload drives concurrent sessions: every side of every session sends
// numbered messages ("<side> #<seq> <chat>"), each with its own client
// message id, resending retryable failures with the same id.
type Workload struct {
	opts     WorkloadOptions
	sessions []*Session
	wg       sync.WaitGroup

	mu    sync.Mutex
	sent  []*Sent
	acked int
	cond  chan struct{} // closed and replaced on every ack
}

// MessageText is the text of a workload message.
func MessageText(chatID, side string, seq int) string {
	return fmt.Sprintf("%s #%03d %s", side, seq, chatID)
}

// StartWorkload starts sending on every side of every session and returns
// at once; Wait returns the record.
func StartWorkload(ctx context.Context, sessions []*Session, opts WorkloadOptions) *Workload {
	opts.fill()
	w := &Workload{opts: opts, sessions: sessions, cond: make(chan struct{})}
	for _, s := range sessions {
		for _, side := range s.Sides {
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				w.drive(ctx, s, side)
			}()
		}
	}
	return w
}

func (w *Workload) drive(ctx context.Context, s *Session, side Side) {
	tick := time.NewTicker(w.opts.Interval)
	defer tick.Stop()
	for seq := 1; seq <= w.opts.Messages; seq++ {
		m := &Sent{ChatID: s.ChatID, Side: side.Name(), Seq: seq, Text: MessageText(s.ChatID, side.Name(), seq),
			CMID: fmt.Sprintf("wl-%s-%s-%d", s.ChatID, side.Name(), seq), At: time.Now()}
		deadline := time.Now().Add(w.opts.RetryFor)
		for {
			m.Attempts++
			idx, retryable, err := side.Send(ctx, m.Text, m.CMID)
			if err == nil {
				m.Acked, m.Index, m.Err = true, idx, nil
				break
			}
			m.Err = err
			if !retryable || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(w.opts.RetryDelay):
			}
		}
		w.mu.Lock()
		w.sent = append(w.sent, m)
		if m.Acked {
			w.acked++
			close(w.cond)
			w.cond = make(chan struct{})
		}
		w.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Acked returns how many messages have been acknowledged so far.
func (w *Workload) Acked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

// WaitAcked blocks until at least n messages are acknowledged (use it to
// inject a fault mid-workload) or ctx expires.
func (w *Workload) WaitAcked(ctx context.Context, n int) error {
	for {
		w.mu.Lock()
		acked, cond := w.acked, w.cond
		w.mu.Unlock()
		if acked >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("workload: %d of %d messages acknowledged: %w", acked, n, ctx.Err())
		case <-cond:
		}
	}
}

// Wait waits for every side to finish and returns the record.
func (w *Workload) Wait() *Record {
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	rec := &Record{Sessions: w.sessions}
	for _, m := range w.sent {
		rec.Sent = append(rec.Sent, *m)
	}
	return rec
}

// Record is what a workload sent.
type Record struct {
	Sessions []*Session
	Sent     []Sent
}

// Acked counts acknowledged messages.
func (r *Record) Acked() int {
	n := 0
	for _, m := range r.Sent {
		if m.Acked {
			n++
		}
	}
	return n
}

// Of returns the messages sent in chatID.
func (r *Record) Of(chatID string) []Sent {
	var out []Sent
	for _, m := range r.Sent {
		if m.ChatID == chatID {
			out = append(out, m)
		}
	}
	return out
}

// CheckOptions says what Check proves.
type CheckOptions struct {
	// UCS, when set, is read for every session's transcript, which must hold
	// every acknowledged message too (transcript saves are asynchronous:
	// Check waits up to TranscriptTimeout for them).
	UCS *ucsmock.Client
	// TranscriptTimeout bounds the wait for UCS (default 20s).
	TranscriptTimeout time.Duration
	// FailoverNotices requires a ParticipantDisconnected and a
	// ParticipantReconnected notice in every participant's view.
	FailoverNotices bool
	// FailoverNoticesInUCS requires them in the UCS transcript as well.
	FailoverNoticesInUCS bool
	// MinAcked fails the check when fewer messages were acknowledged in all
	// (default: at least one per side per session).
	MinAcked int
}

// Check proves, for every session of rec: every acknowledged message
// appears exactly once, at the index it was acknowledged with, in order, in
// each participant's view and (with opts.UCS) in the UCS transcript;
// messages whose send was not acknowledged appear at most once; no index
// holds two different events across those views (CheckIndexes); and, when
// asked, the failover notices are there. Each problem is a t.Error.
func Check(t testing.TB, ctx context.Context, rec *Record, opts CheckOptions) {
	t.Helper()
	if opts.TranscriptTimeout <= 0 {
		opts.TranscriptTimeout = 20 * time.Second
	}
	minAcked := opts.MinAcked
	if minAcked == 0 {
		for _, s := range rec.Sessions {
			minAcked += len(s.Sides)
		}
	}
	acked := rec.Acked()
	t.Logf("workload: %d sessions, %d messages sent, %d acknowledged", len(rec.Sessions), len(rec.Sent), acked)
	if acked < minAcked {
		t.Errorf("workload: only %d messages acknowledged, want at least %d; first failures: %s", acked, minAcked, firstFailures(rec, 3))
	}
	views, transcripts := 0, 0
	defer func() {
		t.Logf("checker: %d participant views and %d UCS transcripts checked", views, transcripts)
	}()
	for _, s := range rec.Sessions {
		sent := rec.Of(s.ChatID)
		var through uint64
		for _, m := range sent {
			through = max(through, m.Index)
		}
		viewers := make([]Viewer, 0, len(s.Sides)+len(s.Watchers))
		for _, side := range s.Sides {
			viewers = append(viewers, side)
		}
		viewers = append(viewers, s.Watchers...)
		var seen []NamedView
		for _, v := range viewers {
			vctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			view, err := v.View(vctx, through)
			cancel()
			if err != nil {
				t.Errorf("chat %s: %s view: %v", s.ChatID, v.Name(), err)
				continue
			}
			views++
			seen = append(seen, NamedView{Name: v.Name(), Events: view})
			for _, e := range CheckView(sent, view, opts.FailoverNotices) {
				t.Errorf("chat %s: %s view: %v", s.ChatID, v.Name(), e)
			}
		}
		if opts.UCS != nil {
			transcripts++
			var errs []error
			var last []ViewEvent
			err := Poll(opts.TranscriptTimeout, func() error {
				tr, err := opts.UCS.Transcript(ctx, s.ChatID)
				if err != nil {
					errs = []error{fmt.Errorf("read transcript: %w", err)}
					return err
				}
				last = TranscriptView(tr)
				errs = CheckView(sent, last, opts.FailoverNoticesInUCS)
				return errors.Join(errs...)
			})
			if err != nil {
				for _, e := range errs {
					t.Errorf("chat %s: ucs transcript: %v", s.ChatID, e)
				}
			}
			if last != nil {
				seen = append(seen, NamedView{Name: "ucs transcript", Events: last})
			}
		}
		for _, e := range CheckIndexes(seen) {
			t.Errorf("chat %s: %v", s.ChatID, e)
		}
	}
}

// NamedView is one view of a session (a participant's, a push channel's,
// the UCS transcript) under the name reports give it.
type NamedView struct {
	Name   string
	Events []ViewEvent
}

// CheckIndexes proves that no index holds two different events across the
// views of one session: an index is one event for everyone (invariant 4).
// Two views disagree when they show different event types at one index, or
// two messages with different texts. A view may lack an index (visibility,
// or a push channel that did not reach it), and the customer API's
// ChatEnded is the agent API's SessionEnded. It returns one error per index
// in conflict, naming every view and what it holds there.
func CheckIndexes(views []NamedView) []error {
	type holder struct {
		view string
		ev   ViewEvent
	}
	byIndex := map[uint64][]holder{}
	var indexes []uint64
	for _, v := range views {
		for _, ev := range v.Events {
			if _, ok := byIndex[ev.Index]; !ok {
				indexes = append(indexes, ev.Index)
			}
			byIndex[ev.Index] = append(byIndex[ev.Index], holder{v.Name, ev})
		}
	}
	sort.Slice(indexes, func(i, j int) bool { return indexes[i] < indexes[j] })
	same := func(a, b ViewEvent) bool {
		ta, tb := canonicalType(a.Type), canonicalType(b.Type)
		return ta == tb && (ta != "Message" || a.Text == b.Text)
	}
	var errs []error
	for _, i := range indexes {
		hs := byIndex[i]
		conflict := false
		for _, h := range hs[1:] {
			if !same(hs[0].ev, h.ev) {
				conflict = true
				break
			}
		}
		if !conflict {
			continue
		}
		parts := make([]string, 0, len(hs))
		for _, h := range hs {
			parts = append(parts, fmt.Sprintf("%s %q in the %s", h.ev.Type, h.ev.Text, h.view))
		}
		errs = append(errs, fmt.Errorf("index %d holds two different events: %s", i, strings.Join(parts, ", ")))
	}
	return errs
}

// canonicalType maps the agent API's event type names to the customer
// API's where the two differ.
func canonicalType(t string) string {
	if t == "SessionEnded" {
		return "ChatEnded"
	}
	return t
}

func firstFailures(rec *Record, n int) string {
	var out []string
	for _, m := range rec.Sent {
		if !m.Acked && len(out) < n {
			out = append(out, fmt.Sprintf("%q after %d attempts: %v", m.Text, m.Attempts, m.Err))
		}
	}
	return strings.Join(out, "; ")
}

// TranscriptView turns a UCS transcript into a view.
func TranscriptView(tr *ucsmock.Transcript) []ViewEvent {
	out := make([]ViewEvent, 0, len(tr.Events))
	for _, ev := range tr.Events {
		out = append(out, ViewEvent{Index: ev.GetIndex(), Type: EventType(ev.GetKind()), Text: ev.GetText(), ClientMessageID: ev.GetClientMessageId()})
	}
	return out
}

// EventType names a chat core event kind as the customer API does.
func EventType(k chatpb.EventKind) string {
	switch k {
	case chatpb.EventKind_EVENT_KIND_SESSION_STARTED:
		return "SessionStarted"
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:
		return "ParticipantJoined"
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:
		return "ParticipantLeft"
	case chatpb.EventKind_EVENT_KIND_MESSAGE:
		return "Message"
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED:
		return "TypingStarted"
	case chatpb.EventKind_EVENT_KIND_TYPING_STOPPED:
		return "TypingStopped"
	case chatpb.EventKind_EVENT_KIND_PUSH_URL:
		return "PushUrl"
	case chatpb.EventKind_EVENT_KIND_NOTICE:
		return "Notice"
	case chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED:
		return "TranscriptSaved"
	case chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:
		return "TranscriptSaveFailed"
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED:
		return "ParticipantDisconnected"
	case chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:
		return "ParticipantReconnected"
	case chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		return "ChatEnded"
	}
	return k.String()
}

// CheckView checks one view against the messages sent in its session: every
// acknowledged message exactly once, at its acknowledged index; every
// unacknowledged one at most once; indexes strictly increasing; each side's
// messages in the order it sent them; with notices, a disconnected and a
// reconnected notice. It returns every problem found.
func CheckView(sent []Sent, view []ViewEvent, notices bool) []error {
	var errs []error
	byText := map[string]Sent{}
	for _, m := range sent {
		byText[m.Text] = m
	}
	count := map[string]int{}
	at := map[string]uint64{}
	lastSeq := map[string]int{}
	var lastIndex uint64
	var disconnected, reconnected bool
	for i, ev := range view {
		if i > 0 && ev.Index <= lastIndex {
			errs = append(errs, fmt.Errorf("index %d follows index %d: not strictly increasing", ev.Index, lastIndex))
		}
		lastIndex = ev.Index
		switch ev.Type {
		case "ParticipantDisconnected":
			disconnected = true
		case "ParticipantReconnected":
			reconnected = true
		}
		if ev.Type != "Message" {
			continue
		}
		m, ours := byText[ev.Text]
		if !ours {
			continue
		}
		count[ev.Text]++
		if count[ev.Text] == 1 {
			at[ev.Text] = ev.Index
		}
		if count[ev.Text] > 1 {
			continue // reported below
		}
		if m.Seq <= lastSeq[m.Side] {
			errs = append(errs, fmt.Errorf("%q at index %d comes after %s #%03d: out of order", m.Text, ev.Index, m.Side, lastSeq[m.Side]))
		} else {
			lastSeq[m.Side] = m.Seq
		}
	}
	ordered := append([]Sent(nil), sent...)
	sort.Slice(ordered, func(i, j int) bool {
		if ordered[i].Side != ordered[j].Side {
			return ordered[i].Side < ordered[j].Side
		}
		return ordered[i].Seq < ordered[j].Seq
	})
	for _, m := range ordered {
		n := count[m.Text]
		switch {
		case m.Acked && n == 0:
			errs = append(errs, fmt.Errorf("acknowledged %q (index %d) is missing", m.Text, m.Index))
		case n > 1:
			errs = append(errs, fmt.Errorf("%q appears %d times", m.Text, n))
		case m.Acked && m.Index != 0 && at[m.Text] != m.Index:
			errs = append(errs, fmt.Errorf("%q acknowledged with index %d but shown at index %d", m.Text, m.Index, at[m.Text]))
		}
	}
	if notices && !disconnected {
		errs = append(errs, errors.New("no ParticipantDisconnected notice"))
	}
	if notices && !reconnected {
		errs = append(errs, errors.New("no ParticipantReconnected notice"))
	}
	return errs
}
