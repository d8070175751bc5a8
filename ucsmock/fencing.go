package ucsmock

import (
	"cmp"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// Limits on names; longer ones are rejected as invalid.
const (
	maxChatIDLen = 256
	maxNameLen   = 128
)

// storedEvent is an event as stored, with the epoch of the save that stored it.
type storedEvent struct {
	event *chatpb.Event
	epoch uint64
}

// chatMeta is what is stored about a chat besides its events.
type chatMeta struct {
	Service     string `json:"service"`
	Ended       bool   `json:"ended"`
	Writer      string `json:"writer"`
	Epoch       uint64 `json:"epoch"`
	UpdatedUnix int64  `json:"updatedUnixMs"`
}

// txn is one atomic view of a store, read and write. The bbolt store and
// MemStore implement it, so that both share applySave and applyClaim and
// thereby the same fencing and idempotency rules.
type txn interface {
	// lockService announces, before the first read of a save, the
	// service and the epoch the save carries: PostgreSQL holds the
	// service's epoch shared (or exclusively, if the save may raise it)
	// until the commit. The others need no lock (one writer at a time).
	lockService(service string, epoch uint64) error
	serviceEpoch(service string) (Epoch, error)
	putServiceEpoch(service string, e Epoch) error
	chat(chatID string) (chatMeta, bool, error)
	putChat(chatID string, m chatMeta) error
	event(chatID string, index uint64) (storedEvent, bool, error)
	putEvent(chatID string, se storedEvent) error
	highestIndex(chatID string) (uint64, error)
	// The GDPR operations (gdpr.go).
	tombstone(chatID string) (Tombstone, bool, error)
	putTombstone(ts Tombstone) error
	removeChat(chatID string) error
	chatIDs() ([]string, error)                    // every stored chat, in id order
	events(chatID string) ([]*chatpb.Event, error) // in index order
}

// validName checks a chat id, service, writer or holder.
func validName(what, s string, maxLen int, required bool) error {
	switch {
	case s == "" && required:
		return invalidf("missing %s", what)
	case len(s) > maxLen:
		return invalidf("%s longer than %d bytes", what, maxLen)
	case !utf8.ValidString(s):
		return invalidf("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return invalidf("%s contains a control character", what)
		}
	}
	return nil
}

// validateSave checks a save request and returns its events sorted by index,
// with identical duplicates removed. It changes nothing.
func validateSave(req SaveRequest) ([]*chatpb.Event, error) {
	if err := validName("chatId", req.ChatID, maxChatIDLen, true); err != nil {
		return nil, err
	}
	if err := validName("service", req.Service, maxNameLen, true); err != nil {
		return nil, err
	}
	if err := validName("writer", req.Writer, maxNameLen, false); err != nil {
		return nil, err
	}
	evs := make([]*chatpb.Event, 0, len(req.Events))
	for i, ev := range req.Events {
		switch {
		case ev == nil:
			return nil, invalidf("event %d is null", i)
		case ev.GetIndex() == 0:
			return nil, invalidf("event %d has index 0 (indexes start at 1)", i)
		case ev.GetSessionId() != req.ChatID:
			return nil, invalidf("event %d (index %d) has session_id %q, want chat id %q", i, ev.GetIndex(), ev.GetSessionId(), req.ChatID)
		}
		evs = append(evs, ev)
	}
	slices.SortStableFunc(evs, func(a, b *chatpb.Event) int { return cmp.Compare(a.GetIndex(), b.GetIndex()) })
	out := evs[:0]
	for _, ev := range evs {
		if n := len(out); n > 0 && out[n-1].GetIndex() == ev.GetIndex() {
			if !proto.Equal(out[n-1], ev) {
				return nil, invalidf("two different events with index %d", ev.GetIndex())
			}
			continue
		}
		out = append(out, ev)
	}
	return out, nil
}

// applySave applies a validated save inside tx. Every check runs before the
// first write, so a save that fails leaves tx untouched.
func applySave(tx txn, req SaveRequest, events []*chatpb.Event, nowUnixMs int64) (SaveResult, error) {
	var res SaveResult
	if err := tx.lockService(req.Service, req.Epoch); err != nil {
		return res, err
	}
	cur, err := tx.serviceEpoch(req.Service)
	if err != nil {
		return res, err
	}
	if req.Epoch < cur.Epoch {
		return res, &StaleEpochError{Epoch: cur.Epoch, Holder: cur.Holder}
	}
	// A deleted chat stays deleted: no save of any epoch (a late one, a
	// resend, a new primary restoring it) writes to it again.
	if ts, deleted, err := tx.tombstone(req.ChatID); err != nil {
		return res, err
	} else if deleted {
		return res, &DeletedError{Tombstone: ts}
	}
	meta, exists, err := tx.chat(req.ChatID)
	if err != nil {
		return res, err
	}
	if exists && meta.Service != req.Service {
		return res, &conflictError{reason: "chat belongs to service " + meta.Service}
	}
	var writes []*chatpb.Event
	for _, ev := range events {
		old, ok, err := tx.event(req.ChatID, ev.GetIndex())
		switch {
		case err != nil:
			return res, err
		case !ok:
			writes = append(writes, ev)
		case proto.Equal(old.event, ev):
			res.Unchanged++
		case req.Epoch > old.epoch:
			writes = append(writes, ev)
		default:
			return res, &conflictError{reason: "different event already stored by the same or a newer epoch", index: ev.GetIndex()}
		}
	}

	if req.Epoch > cur.Epoch {
		if err := tx.putServiceEpoch(req.Service, Epoch{Epoch: req.Epoch, Holder: req.Writer}); err != nil {
			return res, err
		}
	}
	for _, ev := range writes {
		if err := tx.putEvent(req.ChatID, storedEvent{event: ev, epoch: req.Epoch}); err != nil {
			return res, err
		}
	}
	meta.Service = req.Service
	meta.Ended = meta.Ended || req.Ended
	meta.Writer = req.Writer
	meta.Epoch = max(meta.Epoch, req.Epoch)
	meta.UpdatedUnix = nowUnixMs
	if err := tx.putChat(req.ChatID, meta); err != nil {
		return res, err
	}
	res.Saved = len(writes)
	if res.HighestIndex, err = tx.highestIndex(req.ChatID); err != nil {
		return res, err
	}
	return res, nil
}

// validateClaim checks an epoch claim. It changes nothing.
func validateClaim(service string, expect, epoch uint64, holder string) error {
	if err := validName("service", service, maxNameLen, true); err != nil {
		return err
	}
	if err := validName("holder", holder, maxNameLen, true); err != nil {
		return err
	}
	if epoch <= expect {
		return invalidf("epoch %d must be greater than expect %d", epoch, expect)
	}
	return nil
}

// validateRenew checks a renewal's fields.
func validateRenew(service string, epoch uint64, holder string) error {
	if err := validName("service", service, maxNameLen, true); err != nil {
		return err
	}
	if err := validName("holder", holder, maxNameLen, true); err != nil {
		return err
	}
	if epoch == 0 {
		return invalidf("epoch 0 cannot be renewed")
	}
	return nil
}

// applyClaim is the compare-and-set of a validated claim inside tx. A retry
// of a claim that already succeeded (same epoch and holder) succeeds again,
// so a claimant whose answer was lost can simply retry.
//
// silent > 0 makes it a claim that must not depose a live holder: it fails
// (HolderAlive) while another holder claimed or renewed within silent of now.
func applyClaim(tx txn, service string, expect, epoch uint64, holder string, silent time.Duration, now time.Time) (Epoch, error) {
	cur, err := tx.serviceEpoch(service)
	if err != nil {
		return Epoch{}, err
	}
	if cur.Epoch == epoch && cur.Holder == holder {
		return cur, nil
	}
	if cur.Epoch != expect || epoch <= cur.Epoch {
		return Epoch{}, &EpochConflictError{Epoch: cur.Epoch, Holder: cur.Holder}
	}
	if ago := now.Sub(time.UnixMilli(cur.HeardUnixMs)); silent > 0 && cur.Holder != "" && cur.Holder != holder && cur.HeardUnixMs > 0 && ago < silent {
		return Epoch{}, &EpochConflictError{Epoch: cur.Epoch, Holder: cur.Holder, HolderAlive: true, HeardAgo: ago.Round(time.Millisecond)}
	}
	next := Epoch{Epoch: epoch, Holder: holder, HeardUnixMs: now.UnixMilli()}
	if err := tx.putServiceEpoch(service, next); err != nil {
		return Epoch{}, err
	}
	return next, nil
}

// applyRenew records inside tx that holder, holding epoch, is alive.
func applyRenew(tx txn, service string, epoch uint64, holder string, now time.Time) (Epoch, error) {
	cur, err := tx.serviceEpoch(service)
	if err != nil {
		return Epoch{}, err
	}
	switch {
	case epoch < cur.Epoch:
		return Epoch{}, &StaleEpochError{Epoch: cur.Epoch, Holder: cur.Holder}
	case epoch > cur.Epoch || cur.Holder != holder:
		return Epoch{}, &EpochConflictError{Epoch: cur.Epoch, Holder: cur.Holder}
	}
	cur.HeardUnixMs = now.UnixMilli()
	if err := tx.putServiceEpoch(service, cur); err != nil {
		return Epoch{}, err
	}
	return cur, nil
}
