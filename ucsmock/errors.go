package ucsmock

import (
	"errors"
	"fmt"
	"time"

	"github.com/hachat/hachat/chatcore/transcript"
)

// Sentinel errors that callers branch on with errors.Is: chatcore's (package
// chatcore/transcript), so that a core matches them whatever store it uses.
var (
	ErrStaleEpoch     = transcript.ErrStaleEpoch
	ErrEpochConflict  = transcript.ErrEpochConflict
	ErrHolderAlive    = transcript.ErrHolderAlive
	ErrUnavailable    = transcript.ErrUnavailable
	ErrNonRecoverable = transcript.ErrNonRecoverable
	ErrNotFound       = transcript.ErrNotFound
	ErrConflict       = transcript.ErrConflict
	ErrInvalid        = transcript.ErrInvalid
	ErrForbidden      = transcript.ErrForbidden
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

// StaleEpochError is the error of a save fenced by a newer epoch.
type StaleEpochError = transcript.StaleEpochError

// EpochConflictError is the error of a lost epoch claim.
type EpochConflictError = transcript.EpochConflictError

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
