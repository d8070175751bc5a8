// Package workload is the core of the chat workloads that the end-to-end
// tests and hachat chaos drive: numbered messages sent with client message
// ids and resent with the same id while the answer is retryable, and the
// checker that proves every acknowledged message appears exactly once, at
// its acknowledged index, in order, in every view of a chat (a participant's,
// a push channel's, the UCS transcript), and that no index holds two
// different events across views.
package workload

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
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

// Viewer is anything that shows a session's events: every Side, and
// watchers that only look (a customer's push channel, a supervisor).
type Viewer interface {
	// Name labels the viewer in reports.
	Name() string
	// View returns the events seen so far in order, waiting (within ctx)
	// until index through has been seen when the view is fed by a push.
	View(ctx context.Context, through uint64) ([]ViewEvent, error)
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
	// AckedAt is when the acknowledgement arrived (zero when none did).
	AckedAt time.Time
}

// Latency is the client-visible time from the first attempt to the
// acknowledgement (0 when not acknowledged).
func (m Sent) Latency() time.Duration {
	if !m.Acked {
		return 0
	}
	return m.AckedAt.Sub(m.At)
}

// MessageText is the text of a workload message.
func MessageText(chatID, side string, seq int) string {
	return fmt.Sprintf("%s #%03d %s", side, seq, chatID)
}

// NewSent returns message seq of side in chatID, not yet sent.
func NewSent(chatID, side string, seq int) *Sent {
	return &Sent{ChatID: chatID, Side: side, Seq: seq, Text: MessageText(chatID, side, seq),
		CMID: fmt.Sprintf("wl-%s-%s-%d", chatID, side, seq)}
}

// Retry bounds the resends of one message.
type Retry struct {
	// For bounds how long one message is resent (same client message id)
	// while the answer is retryable. Past it the message counts as not
	// acknowledged.
	For time.Duration
	// Delay is the pause between resends.
	Delay time.Duration
}

// SendOne sends m through side, resending with the same client message id
// while the answer is retryable and r allows, and records the outcome in m
// (At, Attempts, Acked, Index, AckedAt, Err).
func SendOne(ctx context.Context, side Side, m *Sent, r Retry) {
	m.At = time.Now()
	deadline := m.At.Add(r.For)
	for {
		m.Attempts++
		idx, retryable, err := side.Send(ctx, m.Text, m.CMID)
		if err == nil {
			m.Acked, m.Index, m.Err, m.AckedAt = true, idx, nil, time.Now()
			return
		}
		m.Err = err
		if !retryable || time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(r.Delay):
		}
	}
}

// FirstFailures describes up to n messages of sent that were not acknowledged.
func FirstFailures(sent []Sent, n int) string {
	var out []string
	for _, m := range sent {
		if !m.Acked && len(out) < n {
			out = append(out, fmt.Sprintf("%q after %d attempts: %v", m.Text, m.Attempts, m.Err))
		}
	}
	return strings.Join(out, "; ")
}

// CheckTranscript reads chatID's transcript from ucs and checks it against
// sent with CheckView, polling until it passes or timeout ends (saves are
// asynchronous). It returns the last transcript read (nil if none) and the
// problems of the last read.
func CheckTranscript(ctx context.Context, ucs *ucsmock.Client, chatID string, sent []Sent, notices bool, timeout time.Duration) ([]ViewEvent, []error) {
	var errs []error
	var last []ViewEvent
	deadline := time.Now().Add(timeout)
	for {
		tr, err := ucs.Transcript(ctx, chatID)
		if err != nil {
			errs = []error{fmt.Errorf("read transcript: %w", err)}
		} else {
			last = TranscriptView(tr)
			errs = CheckView(sent, last, notices)
		}
		if len(errs) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return last, errs
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ViolationKind classifies what the checker found.
type ViolationKind string

// The kinds of violations.
const (
	// Lost: an acknowledged message is missing from a view.
	Lost ViolationKind = "lost"
	// Duplicated: a message appears more than once.
	Duplicated ViolationKind = "duplicated"
	// OutOfOrder: a side's messages, or the indexes, are out of order.
	OutOfOrder ViolationKind = "out of order"
	// WrongIndex: a message is shown at another index than acknowledged.
	WrongIndex ViolationKind = "wrong index"
	// Conflict: one index holds two different events across views.
	Conflict ViolationKind = "conflict"
)

// Violation is one problem the checker found; errors.As gives its kind.
type Violation struct {
	Kind ViolationKind
	Msg  string
}

func (v *Violation) Error() string { return v.Msg }

func violation(k ViolationKind, format string, args ...any) error {
	return &Violation{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the kind of a checker error ("" when it is not a Violation).
func KindOf(err error) ViolationKind {
	var v *Violation
	if errors.As(err, &v) {
		return v.Kind
	}
	return ""
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
		errs = append(errs, violation(Conflict, "index %d holds two different events: %s", i, strings.Join(parts, ", ")))
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
			errs = append(errs, violation(OutOfOrder, "index %d follows index %d: not strictly increasing", ev.Index, lastIndex))
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
			errs = append(errs, violation(OutOfOrder, "%q at index %d comes after %s #%03d: out of order", m.Text, ev.Index, m.Side, lastSeq[m.Side]))
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
			errs = append(errs, violation(Lost, "acknowledged %q (index %d) is missing", m.Text, m.Index))
		case n > 1:
			errs = append(errs, violation(Duplicated, "%q appears %d times", m.Text, n))
		case m.Acked && m.Index != 0 && at[m.Text] != m.Index:
			errs = append(errs, violation(WrongIndex, "%q acknowledged with index %d but shown at index %d", m.Text, m.Index, at[m.Text]))
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
