package chatcore

import (
	"context"
	"errors"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/saver"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// This file is the core's side of the transcript saver (package saver):
// when an event asks for a save, what transcript-save-notices keeps, and
// saverHost, the core as the saver sees it (saver.Core).

// saveTrigger reports whether committing ev asks for a transcript save
// under transcript-auto-save mode autoSave.
func saveTrigger(autoSave int, ev *chatpb.Event) bool {
	switch {
	case ev.Kind == chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
		return true
	case autoSave == AutoSaveAtEnd:
		return false
	}
	switch ev.Kind {
	case chatpb.EventKind_EVENT_KIND_TYPING_STARTED, chatpb.EventKind_EVENT_KIND_TYPING_STOPPED,
		chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED, chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:
		return false
	}
	return true
}

// keeps reports whether transcript-save-notices (the set ns) lets ev into
// the saved transcript.
func (ns NoticeSet) keeps(ev *chatpb.Event) bool {
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
	return ns&n != 0
}

// newSaver builds the core's saver (package saver) over the core's store,
// role, configuration and metrics.
func newSaver(c *Core) *saver.Saver {
	cfg := saver.Config{
		Service: c.cfg.Cluster, Writer: c.cfg.Name,
		AtEndOnly: c.cfg.TranscriptAutoSave == AutoSaveAtEnd, Notices: c.cfg.TranscriptAutoSave == AutoSaveWithNotices,
		Keep:         c.notices.keeps,
		CloseOnError: c.cfg.TranscriptSaveOnError == SaveOnErrorClose, OnError: c.cfg.TranscriptSaveOnError,
		Workers: c.cfg.TranscriptSaveWorkers, SaveTimeout: c.cfg.TranscriptSaveTimeout, Linger: c.cfg.TranscriptSaveLinger,
		ResendAttempts: c.cfg.TranscriptResendAttempts, ResendDelay: c.cfg.TranscriptResendDelay,
		BreakerTimeout: c.cfg.TranscriptBreakerTimeout, BreakerFailures: c.cfg.TranscriptBreakerFailures,
	}
	m := saver.Metrics{Saves: c.m.saves, Resends: c.m.saveResends, GiveUps: c.m.saveGiveUps,
		ResendsExhausted: c.m.resendsExhausted, Recovered: c.m.savesRecovered, BreakerState: c.m.breakerState}
	return saver.New(saverHost{c}, c.store, c.role, cfg, m, c.tel.Registry, c.log, c.tracer, c.now)
}

// saverHost is the core as the saver sees it (saver.Core).
type saverHost struct{ c *Core }

// AppendNotice appends a transcript notice from the system; nil when the
// session has ended.
func (h saverHost) AppendNotice(ctx context.Context, s saver.Session, kind chatpb.EventKind, attrs map[string]string) error {
	_, _, err := h.c.append(ctx, s.(*session), func(st *sessionlog.State) (*chatpb.Event, uint64, error) {
		if st.Ended {
			return nil, 0, errEnded
		}
		return &chatpb.Event{Kind: kind, From: systemParticipant, Attrs: attrs}, 0, nil
	})
	if errors.Is(err, errEnded) {
		return nil
	}
	return err
}

// EndSession ends s (transcript-save-on-error=close).
func (h saverHost) EndSession(ctx context.Context, s saver.Session, reason string) error {
	return h.c.endSession(ctx, s.(*session), reason)
}

// Progress reports s's save progress to the backup.
func (h saverHost) Progress(s saver.Session, now bool) { h.c.replicateProgress(s.(*session), now) }

// StepDown makes the core a backup.
func (h saverHost) StepDown(reason string, newer uint64) { h.c.stepDown(reason, newer) }

// RetryDue schedules s for the janitor at at (janitor.go).
func (h saverHost) RetryDue(s saver.Session, at time.Time) { h.c.due.schedule(s.(*session), at) }

// ID is the session's id (saver.Session).
func (s *session) ID() string { return s.id }

// SaveState is the session's save bookkeeping, which package saver owns;
// s.mu guards its fields.
func (s *session) SaveState() *saver.State { return &s.save }

// EventLocked is the committed event at index i. Call with s.mu held.
func (s *session) EventLocked(i uint64) *chatpb.Event { return s.log.Entries()[i-1].Ev }

// EndedLocked reports whether the session has ended. Call with s.mu held.
func (s *session) EndedLocked() bool { return s.log.State.Ended }

// RemovedLocked reports whether the core dropped the session. Call with
// s.mu held.
func (s *session) RemovedLocked() bool { return s.removed }

// Adopted is the save target of a chat of an adopted pair (adopt.go).
func (s *session) Adopted() (service string, epoch uint64, ok bool) {
	if a := s.adopted.Load(); a != nil {
		return a.service, a.epoch, true
	}
	return "", 0, false
}
