package harness

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/ucsmock"
	"github.com/hachat/hachat/workload"
)

// The workload's core (message records, sides and viewers, the send loop
// and the checker) lives in package workload, shared with hachat chaos;
// these names keep the harness's API.
type (
	// ViewEvent is workload.ViewEvent.
	ViewEvent = workload.ViewEvent
	// Side is workload.Side.
	Side = workload.Side
	// Viewer is workload.Viewer.
	Viewer = workload.Viewer
	// Sent is workload.Sent.
	Sent = workload.Sent
	// NamedView is workload.NamedView.
	NamedView = workload.NamedView
)

// MessageText is workload.MessageText.
func MessageText(chatID, side string, seq int) string { return workload.MessageText(chatID, side, seq) }

// CheckView is workload.CheckView.
func CheckView(sent []Sent, view []ViewEvent, notices bool) []error {
	return workload.CheckView(sent, view, notices)
}

// CheckIndexes is workload.CheckIndexes.
func CheckIndexes(views []NamedView) []error { return workload.CheckIndexes(views) }

// TranscriptView is workload.TranscriptView.
func TranscriptView(tr *ucsmock.Transcript) []ViewEvent { return workload.TranscriptView(tr) }

// EventType is workload.EventType.
func EventType(k chatpb.EventKind) string { return workload.EventType(k) }

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
		m := workload.NewSent(s.ChatID, side.Name(), seq)
		workload.SendOne(ctx, side, m, workload.Retry{For: w.opts.RetryFor, Delay: w.opts.RetryDelay})
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
		t.Errorf("workload: only %d messages acknowledged, want at least %d; first failures: %s", acked, minAcked, workload.FirstFailures(rec.Sent, 3))
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
			last, errs := workload.CheckTranscript(ctx, opts.UCS, s.ChatID, sent, opts.FailoverNoticesInUCS, opts.TranscriptTimeout)
			for _, e := range errs {
				t.Errorf("chat %s: ucs transcript: %v", s.ChatID, e)
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
