package chatcore

import (
	"context"
	"time"

	"github.com/hachat/hachat/chatcore/transcript"
)

// Errors a TranscriptStore returns; the saver branches on them with
// errors.Is. They live in chatcore/transcript, with the records of the seam,
// so that a store (ucsmock, or any other) returns them without importing
// chatcore.
var (
	// ErrStaleEpoch means the store has seen a newer epoch: this core is fenced.
	ErrStaleEpoch = transcript.ErrStaleEpoch
	// ErrUnavailable is a recoverable failure (timeout, outage, 503): resend later.
	ErrUnavailable = transcript.ErrUnavailable
	// ErrNonRecoverable is a permanent refusal of a save (transcript-save-on-error applies).
	ErrNonRecoverable = transcript.ErrNonRecoverable
	// ErrNotFound means the store has no transcript for the chat.
	ErrNotFound = transcript.ErrNotFound
	// ErrEpochConflict means a ClaimEpoch compare-and-set lost.
	ErrEpochConflict = transcript.ErrEpochConflict
	// ErrHolderAlive means a ClaimEpochIfSilent found the holder's lease
	// alive (it also matches ErrEpochConflict).
	ErrHolderAlive = transcript.ErrHolderAlive
	// ErrConflict means a save tried to change an event stored by the same
	// or a newer epoch; the saver treats it as non-recoverable.
	ErrConflict = transcript.ErrConflict
	// ErrInvalid means the store refused the request as malformed; the saver
	// treats it as non-recoverable.
	ErrInvalid = transcript.ErrInvalid
	// ErrForbidden means the store refused the writer's credentials.
	ErrForbidden = transcript.ErrForbidden
)

// SaveRequest is one idempotent transcript save: some events of one chat in
// index order (notices that transcript-save-notices excludes are left out),
// stamped with the writer's epoch for fencing. Service is the core's
// Cluster: the epoch is per primary/backup pair.
type SaveRequest = transcript.SaveRequest

// SaveResult is what the store reports after a save.
type SaveResult = transcript.SaveResult

// Transcript is a stored transcript.
type Transcript = transcript.Transcript

// Epoch is the fencing epoch of a service and who holds it.
type Epoch = transcript.Epoch

// ChatInfo describes one stored chat, as a ChatLister lists it.
type ChatInfo = transcript.ChatInfo

// ChatFilter selects the chats a ChatLister lists.
type ChatFilter = transcript.ChatFilter

// SaveBatchResult is one chat's outcome of a batched save.
type SaveBatchResult = transcript.SaveBatchResult

// TranscriptStore is the seam to UCS: ucsmock.Client over HTTP, or an
// in-memory double in tests. It belongs to chatcore (its user); any store
// can stand behind it. Every method is safe for concurrent use and honours
// ctx:
//
//   - Save is idempotent per chat and index: saving an index twice (a
//     resend, or a new primary re-saving) is harmless; a different event at
//     a stored index replaces it only when the save's epoch is newer than
//     the epoch that stored it, otherwise the save fails with ErrConflict.
//   - Save is fenced: an epoch older than the newest the store has seen
//     (from saves and claims) fails with ErrStaleEpoch (a
//     *transcript.StaleEpochError naming the current epoch); a newer one
//     becomes the service's epoch (the store learns epochs from the writes).
//   - ClaimEpoch is a compare-and-set that fails with ErrEpochConflict when
//     the current epoch is not expect; ClaimEpochIfSilent also fails, with
//     ErrHolderAlive, while another holder renewed within silent; Renew is
//     the holder's heartbeat. They make the store a Fencer (StoreFencer)
//     for a core given no coordination cluster.
//   - Failures a caller may retry wrap ErrUnavailable; ErrNonRecoverable
//     means retrying will not help.
type TranscriptStore interface {
	// Save stores events of one chat and reports what it stored.
	Save(ctx context.Context, req SaveRequest) (SaveResult, error)
	// Transcript returns a chat's stored events in index order, or ErrNotFound.
	Transcript(ctx context.Context, chatID string) (*Transcript, error)
	// ClaimEpoch sets the service's epoch to epoch iff it currently is
	// expect and epoch > expect.
	ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error)
	// ClaimEpochIfSilent is ClaimEpoch that also fails while another
	// holder renewed the current epoch within silent.
	ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error)
	// Renew records that holder, which holds epoch, is alive.
	Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error)
	// Epoch returns the service's current epoch (zero if none was ever seen).
	Epoch(ctx context.Context, service string) (Epoch, error)
}

// BatchTranscriptStore is a TranscriptStore that also saves many chats in
// one call (ucsmock.Client is). With one, the saver sends the sessions
// queued for a save together: see docs/chatcore.md. SaveBatch applies each
// request with exactly the rules of Save and reports one result per request
// in order; its error is non-nil only when the batch as a whole failed.
type BatchTranscriptStore interface {
	TranscriptStore
	// SaveBatch saves reqs, one result per request.
	SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error)
}

// ChatLister is a store that lists its chats (ucsmock.Client is): a new
// primary then reads one listing instead of every session's transcript.
type ChatLister interface {
	// Chats lists the stored chats f keeps.
	Chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error)
}
