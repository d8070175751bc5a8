package chatcore

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/chatcore/saver"
	"github.com/hachat/hachat/chatcore/sessionlog"
)

// session is one live chat. appendMu serialises appenders across the second
// copy, so indexes are assigned and committed in order; mu guards everything
// else and is only held briefly.
type session struct {
	id       string
	startReq string // client_request_id of the StartSession that started it ("" if none); immutable

	appendMu sync.Mutex
	replGen  atomic.Uint64 // generation of the backup link that holds this session

	// adopted is set on a session of another pair this core adopted
	// (adopt.go): its saves go to that pair's service at the epoch this
	// core holds there.
	adopted atomic.Pointer[adoptedSave]

	mu   sync.Mutex
	log  sessionlog.Log // the committed events and their fold (log.State)
	subs map[*subscriber]struct{}

	// save is the transcript saver's bookkeeping (package saver owns it;
	// mu guards it): progress, queue state, resends, the trace that asked.
	// SavedThrough, FinalSaved and NoFinalSave are replicated.
	save    saver.State
	endedAt time.Time
	removed bool // dropped from the core's map
	// doubt is the event whose second copy failed with an uncertain
	// outcome: it may exist at the backup or in UCS, so the next index is
	// its own until a definite copy commits it (see doubt.go). Set and
	// resolved with appendMu held too; a primary's only.
	doubt     *chatpb.Event
	doubtNext time.Time // the janitor's next try at it
}

func newSession(id string) *session {
	return &session{id: id, log: sessionlog.NewLog()}
}

// lastIndex returns the index of the last committed event. Call with mu held.
func (s *session) lastIndex() uint64 { return s.log.LastIndex() }

// snapshotLocked is the session whole, as a backup takes it (call with s.mu
// held).
func (s *session) snapshotLocked() *chatpb.SessionSnapshot {
	snap := &chatpb.SessionSnapshot{SessionId: s.id, Events: make([]*chatpb.Event, s.log.LastIndex()),
		SavedThrough: s.save.SavedThrough, FinalSaved: s.save.FinalSaved, NoFinalSave: s.save.NoFinalSave}
	for i, e := range s.log.Entries() {
		snap.Events[i] = e.Ev
	}
	return snap
}

// subscriber is one Subscribe stream's mailbox. Fan-out never blocks on it:
// when ch is full the subscriber is removed and ch closed, and the stream
// catches up from the log by itself.
//
// A subscriber with direct (a member of a SubscribeStream) may skip its
// mailbox: while held is 0 (no event in ch or in its tail's hands, the
// catch-up from the log done), fan-out hands the event to direct, under the
// session's lock, which queues it for the stream's writer without blocking
// and without waking the member's goroutine. When direct declines (the
// stream's queue is full, the event ends the member, the member is ending),
// the event goes to ch as before and held counts it until the tail has
// delivered it, so the events keep their order.
type subscriber struct {
	ch     chan *chatpb.Event
	direct func(*chatpb.Event) bool // nil: always ch
	held   atomic.Int32             // events in ch or being delivered, plus one during the catch-up
	next   atomic.Uint64            // the index after the last event direct took
}

// newID returns 128 random bits as 32 hex digits (session ids, secure keys).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// hashKey returns the hex SHA-256 of a secure key, as stored in key_hash.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// keyMatches compares a presented key's hash with the stored one in constant time.
func keyMatches(presentedHash, stored string) bool {
	return stored != "" && subtle.ConstantTimeCompare([]byte(presentedHash), []byte(stored)) == 1
}
