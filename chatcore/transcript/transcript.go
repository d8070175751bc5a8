// Package transcript holds what a chat core and the transcript store behind
// it (UCS) exchange: the records of the seam chatcore.TranscriptStore and
// the errors a store returns. It belongs to chatcore, the package that
// depends on the seam (as database/sql/driver belongs to database/sql); a
// store such as ucsmock implements the seam with these types, so any store
// can stand behind UCS without chatcore knowing it.
package transcript

import (
	"errors"
	"fmt"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// SaveBatchResult is the outcome of one save of a batch: Err is nil and
// Result set, or Err is what Save would have returned for it.
type SaveBatchResult struct {
	// Result is what the save stored (zero when Err is set).
	Result SaveResult
	// Err is the save's error, matched with errors.Is like Save's.
	Err error
}

// SaveRequest is one transcript save: some events of one chat, stamped with
// the writer's epoch.
type SaveRequest struct {
	// ChatID is the chat (session) id; every event's SessionId must equal it.
	ChatID string
	// Service is the chat service the chat belongs to; epochs are per service.
	Service string
	// Epoch is the fencing token of the writer (the primary's epoch).
	Epoch uint64
	// Writer names the writing chat core (e.g. "core-a"), for the record.
	Writer string
	// Events are the events to store; each has an Index >= 1. They need not
	// be contiguous (transcript-save-notices may leave notices out).
	Events []*chatpb.Event
	// Ended marks the chat as ended; once set it stays set.
	Ended bool
}

// SaveResult reports what a save did.
type SaveResult struct {
	// Saved counts the events written by this save (new or replaced).
	Saved int `json:"saved"`
	// Unchanged counts the events that were already stored identically.
	Unchanged int `json:"unchanged"`
	// HighestIndex is the highest index now stored for the chat (0 if none).
	HighestIndex uint64 `json:"highestIndex"`
}

// Transcript is a chat's stored transcript.
type Transcript struct {
	// ChatID is the chat id.
	ChatID string
	// Service is the chat service the chat belongs to.
	Service string
	// Ended reports whether a save marked the chat ended.
	Ended bool
	// Writer is the writer of the last save.
	Writer string
	// Epoch is the newest epoch that saved to this chat.
	Epoch uint64
	// Events are the stored events in index order.
	Events []*chatpb.Event
}

// ChatInfo describes one stored chat, as listed by Chats.
type ChatInfo struct {
	// ChatID is the chat id.
	ChatID string `json:"chatId"`
	// Service is the chat service the chat belongs to.
	Service string `json:"service"`
	// Ended reports whether a save marked the chat ended.
	Ended bool `json:"ended"`
	// Writer is the writer of the last save.
	Writer string `json:"writer"`
	// Epoch is the newest epoch that saved to this chat.
	Epoch uint64 `json:"epoch"`
	// HighestIndex is the highest stored event index (0 if none).
	HighestIndex uint64 `json:"highestIndex"`
	// UpdatedUnixMs is the time of the last save, in Unix milliseconds.
	UpdatedUnixMs int64 `json:"updatedUnixMs"`
}

// ChatFilter selects the chats Chats lists.
type ChatFilter struct {
	// Service, if not empty, keeps only the chats of that service.
	Service string
	// Live keeps only the chats not ended; Ended only the ended ones;
	// neither keeps all.
	Live, Ended bool
}

// Keep reports whether the filter keeps c.
func (f ChatFilter) Keep(c ChatInfo) bool {
	return (f.Service == "" || f.Service == c.Service) && !(f.Live && c.Ended) && !(f.Ended && !c.Ended)
}

// Epoch is a service's fencing epoch and the writer that holds it.
type Epoch struct {
	// Epoch is the newest epoch seen for the service (0: none yet).
	Epoch uint64 `json:"epoch"`
	// Holder is the claimant of that epoch (or the writer of the save that
	// raised it).
	Holder string `json:"holder"`
	// HeardUnixMs is when the holder last claimed or renewed the epoch, by
	// the store's clock (0: never).
	HeardUnixMs int64 `json:"heardUnixMs,omitempty"`
}

// Sentinel errors that callers branch on with errors.Is.
var (
	// ErrStaleEpoch means a save carried an epoch older than the service's
	// newest; the writer is fenced and must step down. The error is a
	// *StaleEpochError that carries the current epoch.
	ErrStaleEpoch = errors.New("ucsmock: stale epoch")
	// ErrEpochConflict means an epoch claim lost the compare-and-set; the
	// error is an *EpochConflictError that carries the current epoch.
	ErrEpochConflict = errors.New("ucsmock: epoch claim conflict")
	// ErrHolderAlive means a ClaimEpochIfSilent found the current holder
	// alive (it renewed within the silence asked for); its error also
	// matches ErrEpochConflict.
	ErrHolderAlive = errors.New("ucsmock: epoch holder is alive")
	// ErrUnavailable means UCS could not be reached or answered with a
	// recoverable error (network error, HTTP 5xx, outage): retry later.
	ErrUnavailable = errors.New("ucsmock: unavailable")
	// ErrNonRecoverable means UCS refused the request with a non-recoverable
	// error (HTTP 422): retrying will not help.
	ErrNonRecoverable = errors.New("ucsmock: non-recoverable error")
	// ErrNotFound means the chat is unknown.
	ErrNotFound = errors.New("ucsmock: not found")
	// ErrConflict means a save tried to change an event stored by the same
	// or a newer epoch, or to move a chat to another service.
	ErrConflict = errors.New("ucsmock: conflicting transcript")
	// ErrInvalid means the request was malformed (HTTP 400, 413).
	ErrInvalid = errors.New("ucsmock: invalid request")
	// ErrForbidden means the server refused the token: the admin API (wrong
	// admin token, or disabled), or a save or claim without the writer token.
	ErrForbidden = errors.New("ucsmock: access denied")
)

// StaleEpochError is the error of a save fenced by a newer epoch. It matches
// ErrStaleEpoch.
type StaleEpochError struct {
	// Epoch is the service's current epoch.
	Epoch uint64
	// Holder holds the current epoch.
	Holder string
}

// Error describes the fencing.
func (e *StaleEpochError) Error() string {
	return fmt.Sprintf("ucsmock: stale epoch: current epoch is %d (holder %q)", e.Epoch, e.Holder)
}

// Is reports whether target is ErrStaleEpoch.
func (e *StaleEpochError) Is(target error) bool { return target == ErrStaleEpoch }

// EpochConflictError is the error of a lost epoch claim. It matches
// ErrEpochConflict.
type EpochConflictError struct {
	// Epoch is the service's current epoch.
	Epoch uint64
	// Holder holds the current epoch.
	Holder string
	// HolderAlive says the claim asked for a silent holder and the holder
	// renewed HeardAgo ago.
	HolderAlive bool
	// HeardAgo is how long ago the holder was last heard (with HolderAlive).
	HeardAgo time.Duration
}

// Error describes the lost claim.
func (e *EpochConflictError) Error() string {
	if e.HolderAlive {
		return fmt.Sprintf("ucsmock: epoch claim conflict: holder %q of epoch %d is alive (renewed %v ago)", e.Holder, e.Epoch, e.HeardAgo)
	}
	return fmt.Sprintf("ucsmock: epoch claim conflict: current epoch is %d (holder %q)", e.Epoch, e.Holder)
}

// Is reports whether target is ErrEpochConflict, or ErrHolderAlive for a
// claim refused because the holder is alive.
func (e *EpochConflictError) Is(target error) bool {
	return target == ErrEpochConflict || target == ErrHolderAlive && e.HolderAlive
}
