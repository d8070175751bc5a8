package chatcore

import (
	"context"
	"errors"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// Errors a TranscriptStore returns; the saver branches on them.
var (
	// ErrStaleEpoch means the store has seen a newer epoch: this core is fenced.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrUnavailable is a recoverable failure (timeout, outage, 503): resend later.
	ErrUnavailable = errors.New("transcript store unavailable")
	// ErrNonRecoverable is a permanent refusal of a save (transcript-save-on-error applies).
	ErrNonRecoverable = errors.New("non-recoverable transcript store error")
	// ErrNotFound means the store has no transcript for the chat.
	ErrNotFound = errors.New("transcript not found")
	// ErrEpochConflict means a ClaimEpoch compare-and-set lost.
	ErrEpochConflict = errors.New("epoch conflict")
)

// SaveRequest is one idempotent transcript save: the events of one chat, in
// index order (the range may skip notices that transcript-save-notices
// excludes), stamped with the writer's epoch for fencing.
type SaveRequest struct {
	Service string
	Epoch   uint64
	Writer  string
	ChatID  string
	Events  []*chatpb.Event
	Ended   bool
}

// SaveResult is what the store reports after a save.
type SaveResult struct {
	// Through is the highest index the store now holds for the chat.
	Through uint64
}

// Transcript is a stored transcript.
type Transcript struct {
	ChatID string
	Events []*chatpb.Event
	Ended  bool
}

// Epoch is the fencing epoch of a service and who holds it.
type Epoch struct {
	Service string
	Epoch   uint64
	Holder  string
}

// TranscriptStore is the seam to UCS. Every method is safe for concurrent
// use and honours ctx. Save is idempotent per chat and index: saving an index
// twice (a resend, or a new primary re-saving) is harmless. Save and
// ClaimEpoch reject an epoch older than the newest the store has seen with
// ErrStaleEpoch; ClaimEpoch is a compare-and-set that fails with
// ErrEpochConflict when the current epoch is not expect.
type TranscriptStore interface {
	Save(ctx context.Context, req SaveRequest) (SaveResult, error)
	Transcript(ctx context.Context, chatID string) (*Transcript, error)
	ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error)
	Epoch(ctx context.Context, service string) (Epoch, error)
}
