package ucsmock

import (
	"errors"
	"fmt"
	"time"
)

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
	// ErrDeleted means the chat was deleted (GDPR): its tombstone refuses
	// every later save, of any epoch, and its export. The error of a refused
	// save is a *DeletedError, which also matches ErrNonRecoverable, so a
	// chat core never retries it.
	ErrDeleted = errors.New("ucsmock: chat deleted")
	// ErrCorrupt means the database file exists but is damaged (zero-length,
	// truncated, or failing the consistency check): New refuses to open it
	// rather than start empty or panic later. Restore the file from a backup,
	// or move it away to start a new database.
	ErrCorrupt = errors.New("corrupt database")
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

// conflictError is a save that would change content it may not change.
type conflictError struct {
	reason string
	index  uint64
}

func (e *conflictError) Error() string {
	if e.index > 0 {
		return fmt.Sprintf("ucsmock: conflicting transcript: %s at index %d", e.reason, e.index)
	}
	return "ucsmock: conflicting transcript: " + e.reason
}

func (e *conflictError) Is(target error) bool { return target == ErrConflict }

// invalidError is a malformed request; its message is shown to the caller.
type invalidError struct{ msg string }

func (e *invalidError) Error() string { return "ucsmock: invalid request: " + e.msg }

func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// DeletedError is a save or export refused by a chat's tombstone. It
// matches ErrDeleted and ErrNonRecoverable.
type DeletedError struct {
	// Tombstone is the chat's tombstone (ChatID set; the rest as the
	// server reported it).
	Tombstone Tombstone
}

// Error describes the refusal.
func (e *DeletedError) Error() string {
	return fmt.Sprintf("ucsmock: chat deleted: %s was deleted at %s (epoch %d)", e.Tombstone.ChatID,
		time.UnixMilli(e.Tombstone.DeletedUnixMs).UTC().Format(time.RFC3339), e.Tombstone.Epoch)
}

// Is reports whether target is ErrDeleted or ErrNonRecoverable.
func (e *DeletedError) Is(target error) bool {
	return target == ErrDeleted || target == ErrNonRecoverable
}
