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

	"github.com/hachat/hachat/chatcore/chatpb"
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

func (f ChatFilter) keep(c ChatInfo) bool {
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
