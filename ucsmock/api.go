// Package ucsmock is a stand-in for the Genesys Universal Contact Server
// (UCS) that is real where it counts for high availability: transcripts are
// stored in an embedded bbolt database that is synced to disk before a save
// is acknowledged, so an acknowledged save survives kill -9; writes are fenced
// by a per-service epoch (a save stamped with an older epoch than one already
// seen is rejected); epochs are claimed with a compare-and-set; and faults
// (latency, recoverable errors, a non-recoverable error, a full outage) can be
// injected over an admin API. For GDPR, transcripts can be exported and
// deleted by chat and by customer (gdpr.go); a deleted chat keeps a durable
// tombstone that refuses every later save.
//
// The package holds the server (New, Server.Handler, Server.Run), the typed
// HTTP client the chat cores use (NewClient), and an in-memory double with
// the same semantics (NewMemStore) for tests without sockets. Client and
// MemStore both satisfy Store.
package ucsmock

import (
	"context"
	"time"

	"github.com/hachat/hachat/chatcore/transcript"
)

// Store is the seam between a chat core and UCS. Client (over HTTP) and
// MemStore (in memory) implement it with the same semantics:
//
//   - Save is idempotent per chat and index: saving an event identical to the
//     stored one changes nothing; a different event at a stored index
//     replaces it only when the save's epoch is newer than the epoch that
//     stored it, otherwise the save fails with ErrConflict.
//   - Save is fenced: an epoch older than the newest epoch seen for the
//     service (from saves and claims) fails with a *StaleEpochError; a newer
//     one becomes the service's epoch.
//   - ClaimEpoch is a compare-and-set on the service's epoch.
//   - Failures a caller may retry wrap ErrUnavailable; ErrNonRecoverable
//     means retrying will not help.
type Store interface {
	// Save stores events of one chat and reports what it stored.
	Save(ctx context.Context, req SaveRequest) (SaveResult, error)
	// Transcript returns a chat's stored events in index order, or ErrNotFound.
	Transcript(ctx context.Context, chatID string) (*Transcript, error)
	// ClaimEpoch sets the service's epoch to epoch iff it currently is
	// expect and epoch > expect; otherwise it fails with *EpochConflictError.
	ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error)
	// ClaimEpochIfSilent is ClaimEpoch that also fails, with an
	// *EpochConflictError matching ErrHolderAlive, while another holder
	// renewed the current epoch (Renew, or its own claim) within silent: a
	// failover claim that must not depose a primary that is alive.
	ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error)
	// Renew records that holder, which holds epoch, is alive (the primary's
	// heartbeat, its lease). It fails with *StaleEpochError when a newer
	// epoch exists and with *EpochConflictError when another holds it.
	Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error)
	// Epoch returns the service's current epoch (zero if none was ever seen).
	Epoch(ctx context.Context, service string) (Epoch, error)
}

// MaxBatchSaves is the most saves one SaveBatch request may carry; the
// server refuses a larger batch (400) and Client.SaveBatch splits one.
const MaxBatchSaves = 1024

// BatchStore is a Store that also saves many chats in one call. Client and
// MemStore implement it.
type BatchStore interface {
	Store
	// SaveBatch applies reqs, each with exactly the rules of Save, and
	// reports one SaveBatchResult per request in the order of reqs: one
	// chat's refusal (stale epoch, conflict, invalid, non-recoverable,
	// injected recoverable error) does not affect the others. The error is
	// non-nil only when the batch as a whole failed (network error, outage,
	// the request refused as a whole, ctx ended); then results is nil and
	// nothing is known to be stored (though, as with Save, some may be).
	SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error)
}

// The records of the store seam are chatcore's (package
// chatcore/transcript); ucsmock implements the seam with them.
type (
	// SaveBatchResult is the outcome of one save of a batch.
	SaveBatchResult = transcript.SaveBatchResult
	// SaveRequest is one transcript save.
	SaveRequest = transcript.SaveRequest
	// SaveResult reports what a save did.
	SaveResult = transcript.SaveResult
	// Transcript is a chat's stored transcript.
	Transcript = transcript.Transcript
	// ChatInfo describes one stored chat, as listed by Chats.
	ChatInfo = transcript.ChatInfo
	// ChatFilter selects the chats Chats lists.
	ChatFilter = transcript.ChatFilter
	// Epoch is a service's fencing epoch and the writer that holds it.
	Epoch = transcript.Epoch
)

// Faults are the injected faults. The zero value injects nothing.
type Faults struct {
	// LatencyMs delays every save and claim by this many milliseconds (0..60000).
	LatencyMs int `json:"latencyMs"`
	// RecoverableErrorRate is the probability (0..1) that a save or claim
	// fails with a recoverable error (HTTP 503, ErrUnavailable).
	RecoverableErrorRate float64 `json:"recoverableErrorRate"`
	// NonRecoverable makes every save and claim fail with a non-recoverable
	// error (HTTP 422, ErrNonRecoverable).
	NonRecoverable bool `json:"nonRecoverable"`
	// Outage makes every transcript and epoch endpoint, reads included,
	// answer 503 as if UCS were down (ErrUnavailable).
	Outage bool `json:"outage"`
}

// Stats are counters since the store started.
type Stats struct {
	// Saves counts successful saves.
	Saves uint64 `json:"saves"`
	// SavedEvents counts events written by successful saves.
	SavedEvents uint64 `json:"savedEvents"`
	// RejectedStale counts saves rejected for a stale epoch.
	RejectedStale uint64 `json:"rejectedStale"`
	// Conflicts counts saves rejected for conflicting content or service.
	Conflicts uint64 `json:"conflicts"`
	// FaultsInjected counts requests failed or delayed by injected faults.
	FaultsInjected uint64 `json:"faultsInjected"`
	// Claims counts successful epoch claims.
	Claims uint64 `json:"claims"`
	// ClaimsLost counts epoch claims that lost the compare-and-set.
	ClaimsLost uint64 `json:"claimsLost"`
	// Unauthorized counts saves and claims refused for a missing or wrong
	// writer token.
	Unauthorized uint64 `json:"unauthorized"`
}
