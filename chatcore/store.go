package chatcore

import (
	"github.com/hachat/hachat/ucsmock"
)

// Errors a TranscriptStore returns; the saver branches on them with errors.Is.
// They are ucsmock's sentinels, so ucsmock.Client and ucsmock.MemStore plug
// in directly.
var (
	// ErrStaleEpoch means the store has seen a newer epoch: this core is fenced.
	ErrStaleEpoch = ucsmock.ErrStaleEpoch
	// ErrUnavailable is a recoverable failure (timeout, outage, 503): resend later.
	ErrUnavailable = ucsmock.ErrUnavailable
	// ErrNonRecoverable is a permanent refusal of a save (transcript-save-on-error applies).
	ErrNonRecoverable = ucsmock.ErrNonRecoverable
	// ErrNotFound means the store has no transcript for the chat.
	ErrNotFound = ucsmock.ErrNotFound
	// ErrEpochConflict means a ClaimEpoch compare-and-set lost.
	ErrEpochConflict = ucsmock.ErrEpochConflict
	// ErrHolderAlive means a ClaimEpochIfSilent found the holder's lease
	// alive (it also matches ErrEpochConflict).
	ErrHolderAlive = ucsmock.ErrHolderAlive
	// ErrConflict means a save tried to change an event stored by the same
	// or a newer epoch; the saver treats it as non-recoverable.
	ErrConflict = ucsmock.ErrConflict
	// ErrInvalid means the store refused the request as malformed; the saver
	// treats it as non-recoverable.
	ErrInvalid = ucsmock.ErrInvalid
)

// SaveRequest is one idempotent transcript save: some events of one chat in
// index order (notices that transcript-save-notices excludes are left out),
// stamped with the writer's epoch for fencing. Service is the core's
// Cluster: the epoch is per primary/backup pair.
type SaveRequest = ucsmock.SaveRequest

// SaveResult is what the store reports after a save.
type SaveResult = ucsmock.SaveResult

// Transcript is a stored transcript.
type Transcript = ucsmock.Transcript

// Epoch is the fencing epoch of a service and who holds it.
type Epoch = ucsmock.Epoch

// TranscriptStore is the seam to UCS: ucsmock.Client over HTTP, or
// ucsmock.MemStore in tests. Every method is safe for concurrent use and
// honours ctx. Save is idempotent per chat and index: saving an index twice
// (a resend, or a new primary re-saving) is harmless. Save and ClaimEpoch
// reject an epoch older than the newest the store has seen (ErrStaleEpoch);
// ClaimEpoch is a compare-and-set that fails with ErrEpochConflict when the
// current epoch is not expect.
type TranscriptStore = ucsmock.Store
