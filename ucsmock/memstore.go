package ucsmock

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// MemStore is an in-memory Store with the same fencing, idempotency and
// fault semantics as the ucsmock server, for tests that need no sockets and
// no disk. Its admin methods mirror Client's; their token is ignored. The
// zero value is not usable: call NewMemStore.
type MemStore struct {
	mu     sync.Mutex
	epochs map[string]Epoch
	chats  map[string]*memChat
	tombs  map[string]Tombstone
	faults *injector
	stats  counters
	now    func() time.Time
}

type memChat struct {
	meta   chatMeta
	events map[uint64]storedEvent
}

// NewMemStore returns an empty MemStore whose recoverable errors are drawn
// from a random source seeded with seed.
func NewMemStore(seed uint64) *MemStore {
	return &MemStore{
		epochs: map[string]Epoch{},
		chats:  map[string]*memChat{},
		tombs:  map[string]Tombstone{},
		faults: newInjector(seed),
		now:    time.Now,
	}
}

var _ Store = (*MemStore)(nil)

// Save stores events of one chat; see Store for the rules.
func (m *MemStore) Save(ctx context.Context, req SaveRequest) (SaveResult, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return SaveResult{}, fmt.Errorf("save %s: %w", req.ChatID, faultOutage.err())
	}
	events, err := validateSave(req)
	if err != nil {
		return SaveResult{}, fmt.Errorf("save %s: %w", req.ChatID, err)
	}
	if err := m.inject(ctx); err != nil {
		return SaveResult{}, fmt.Errorf("save %s: %w", req.ChatID, err)
	}
	cloned := make([]*chatpb.Event, len(events))
	for i, ev := range events {
		cloned[i] = proto.CloneOf(ev)
	}
	m.mu.Lock()
	res, err := applySave(memTxn{m}, req, cloned, m.now().UnixMilli())
	m.mu.Unlock()
	m.stats.countSave(res, err)
	if err != nil {
		return SaveResult{}, fmt.Errorf("save %s: %w", req.ChatID, err)
	}
	return res, nil
}

// Transcript returns a copy of the chat's stored events in index order.
func (m *MemStore) Transcript(ctx context.Context, chatID string) (*Transcript, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return nil, fmt.Errorf("transcript %s: %w", chatID, faultOutage.err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.chats[chatID]
	if !ok {
		return nil, fmt.Errorf("transcript %s: %w", chatID, ErrNotFound)
	}
	t := &Transcript{ChatID: chatID, Service: c.meta.Service, Ended: c.meta.Ended, Writer: c.meta.Writer, Epoch: c.meta.Epoch}
	for _, idx := range slices.Sorted(maps.Keys(c.events)) {
		t.Events = append(t.Events, proto.CloneOf(c.events[idx].event))
	}
	return t, nil
}

// TranscriptXML returns the chat's Genesys-like XML transcript, as the
// server renders it.
func (m *MemStore) TranscriptXML(ctx context.Context, chatID string) ([]byte, error) {
	t, err := m.Transcript(ctx, chatID)
	if err != nil {
		return nil, err
	}
	return transcriptXML(t)
}

// Chats lists the stored chats that f keeps, in chat id order.
func (m *MemStore) Chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return nil, fmt.Errorf("chats: %w", faultOutage.err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ChatInfo
	for _, id := range slices.Sorted(maps.Keys(m.chats)) {
		c := m.chats[id]
		ci := ChatInfo{ChatID: id, Service: c.meta.Service, Ended: c.meta.Ended, Writer: c.meta.Writer, Epoch: c.meta.Epoch, UpdatedUnixMs: c.meta.UpdatedUnix}
		if !f.Keep(ci) {
			continue
		}
		ci.HighestIndex, _ = memTxn{m}.highestIndex(id)
		out = append(out, ci)
	}
	return out, nil
}

// ClaimEpoch is the compare-and-set of the service's epoch; see Store.
func (m *MemStore) ClaimEpoch(ctx context.Context, service string, expect, epoch uint64, holder string) (Epoch, error) {
	return m.ClaimEpochIfSilent(ctx, service, expect, epoch, holder, 0)
}

// Renew records that holder, holding epoch, is alive; see Store.
func (m *MemStore) Renew(ctx context.Context, service string, epoch uint64, holder string) (Epoch, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return Epoch{}, fmt.Errorf("renew epoch %d of %s: %w", epoch, service, faultOutage.err())
	}
	if err := validateRenew(service, epoch, holder); err != nil {
		return Epoch{}, fmt.Errorf("renew epoch %d of %s: %w", epoch, service, err)
	}
	m.mu.Lock()
	e, err := applyRenew(memTxn{m}, service, epoch, holder, time.Now())
	m.mu.Unlock()
	if err != nil {
		return Epoch{}, fmt.Errorf("renew epoch %d of %s: %w", epoch, service, err)
	}
	return e, nil
}

// ClaimEpochIfSilent is ClaimEpoch refused (ErrHolderAlive) while another
// holder renewed within silent; see Store.
func (m *MemStore) ClaimEpochIfSilent(ctx context.Context, service string, expect, epoch uint64, holder string, silent time.Duration) (Epoch, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return Epoch{}, fmt.Errorf("claim epoch %d of %s: %w", epoch, service, faultOutage.err())
	}
	if err := validateClaim(service, expect, epoch, holder); err != nil {
		return Epoch{}, fmt.Errorf("claim epoch %d of %s: %w", epoch, service, err)
	}
	if err := m.inject(ctx); err != nil {
		return Epoch{}, fmt.Errorf("claim epoch %d of %s: %w", epoch, service, err)
	}
	m.mu.Lock()
	e, err := applyClaim(memTxn{m}, service, expect, epoch, holder, silent, time.Now())
	m.mu.Unlock()
	m.stats.countClaim(err)
	if err != nil {
		return Epoch{}, fmt.Errorf("claim epoch %d of %s: %w", epoch, service, err)
	}
	return e, nil
}

// Epoch returns the service's current epoch.
func (m *MemStore) Epoch(ctx context.Context, service string) (Epoch, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return Epoch{}, fmt.Errorf("epoch of %s: %w", service, faultOutage.err())
	}
	if err := validName("service", service, maxNameLen, true); err != nil {
		return Epoch{}, fmt.Errorf("epoch of %s: %w", service, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.epochs[service], nil
}

// SetFaults replaces the injected faults. token is ignored.
func (m *MemStore) SetFaults(ctx context.Context, token string, f Faults) error {
	if err := m.faults.set(f); err != nil {
		return fmt.Errorf("set faults: %w", err)
	}
	return nil
}

// ClearFaults removes every injected fault. token is ignored.
func (m *MemStore) ClearFaults(ctx context.Context, token string) error {
	return m.faults.set(Faults{})
}

// Faults returns the injected faults. token is ignored.
func (m *MemStore) Faults(ctx context.Context, token string) (Faults, error) {
	return m.faults.get(), nil
}

// Stats returns the counters. token is ignored.
func (m *MemStore) Stats(ctx context.Context, token string) (Stats, error) {
	return m.stats.snapshot(), nil
}

// inject consults the fault injector for one save or claim.
func (m *MemStore) inject(ctx context.Context) error {
	f, delayed, err := m.faults.write(ctx)
	if delayed || f != faultNone {
		// (an outage that began since the caller checked is counted here too)
		m.stats.faultsInjected.Add(1)
	}
	if err != nil {
		return err
	}
	return f.err()
}

// memTxn is the txn of a MemStore; the caller holds m.mu.
type memTxn struct{ m *MemStore }

func (t memTxn) lockService(service string, epoch uint64) error { return nil }

func (t memTxn) serviceEpoch(service string) (Epoch, error) { return t.m.epochs[service], nil }

func (t memTxn) putServiceEpoch(service string, e Epoch) error {
	t.m.epochs[service] = e
	return nil
}

func (t memTxn) chat(chatID string) (chatMeta, bool, error) {
	c, ok := t.m.chats[chatID]
	if !ok {
		return chatMeta{}, false, nil
	}
	return c.meta, true, nil
}

func (t memTxn) putChat(chatID string, meta chatMeta) error {
	c, ok := t.m.chats[chatID]
	if !ok {
		c = &memChat{events: map[uint64]storedEvent{}}
		t.m.chats[chatID] = c
	}
	c.meta = meta
	return nil
}

func (t memTxn) event(chatID string, index uint64) (storedEvent, bool, error) {
	c, ok := t.m.chats[chatID]
	if !ok {
		return storedEvent{}, false, nil
	}
	se, ok := c.events[index]
	return se, ok, nil
}

func (t memTxn) putEvent(chatID string, se storedEvent) error {
	c, ok := t.m.chats[chatID]
	if !ok {
		c = &memChat{events: map[uint64]storedEvent{}}
		t.m.chats[chatID] = c
	}
	c.events[se.event.GetIndex()] = se
	return nil
}

func (t memTxn) highestIndex(chatID string) (uint64, error) {
	c, ok := t.m.chats[chatID]
	if !ok || len(c.events) == 0 {
		return 0, nil
	}
	return slices.Max(slices.Collect(maps.Keys(c.events))), nil
}

// counters are the Stats of a store, safe for concurrent use.
type counters struct {
	saves, savedEvents, rejectedStale, conflicts, faultsInjected, claims, claimsLost, unauthorized atomic.Uint64
}

func (c *counters) countSave(res SaveResult, err error) {
	switch {
	case err == nil:
		c.saves.Add(1)
		c.savedEvents.Add(uint64(res.Saved))
	case errors.Is(err, ErrStaleEpoch):
		c.rejectedStale.Add(1)
	case errors.Is(err, ErrConflict):
		c.conflicts.Add(1)
	}
}

func (c *counters) countClaim(err error) {
	switch {
	case err == nil:
		c.claims.Add(1)
	case errors.Is(err, ErrEpochConflict):
		c.claimsLost.Add(1)
	}
}

func (c *counters) snapshot() Stats {
	return Stats{
		Saves:          c.saves.Load(),
		SavedEvents:    c.savedEvents.Load(),
		RejectedStale:  c.rejectedStale.Load(),
		Conflicts:      c.conflicts.Load(),
		Unauthorized:   c.unauthorized.Load(),
		FaultsInjected: c.faultsInjected.Load(),
		Claims:         c.claims.Load(),
		ClaimsLost:     c.claimsLost.Load(),
	}
}

var _ BatchStore = (*MemStore)(nil)

// SaveBatch applies many saves under one lock; see BatchStore. Faults as
// the server's batch endpoint: an outage fails the whole batch, the
// latency is waited once, the non-recoverable error and the recoverable
// error rate apply to each save on its own.
func (m *MemStore) SaveBatch(ctx context.Context, reqs []SaveRequest) ([]SaveBatchResult, error) {
	if m.faults.outage() {
		m.stats.faultsInjected.Add(1)
		return nil, fmt.Errorf("save batch: %w", faultOutage.err())
	}
	out := make([]SaveBatchResult, len(reqs))
	valid := make([][]*chatpb.Event, len(reqs))
	for i, req := range reqs {
		events, err := validateSave(req)
		if err != nil {
			out[i].Err = fmt.Errorf("save %s: %w", req.ChatID, err)
			continue
		}
		cloned := make([]*chatpb.Event, len(events))
		for k, ev := range events {
			cloned[k] = proto.CloneOf(ev)
		}
		valid[i] = cloned
	}
	cur, delayed, err := m.faults.delay(ctx)
	if delayed {
		m.stats.faultsInjected.Add(1)
	}
	switch {
	case err != nil:
		return nil, fmt.Errorf("save batch: %w", err)
	case cur.Outage:
		m.stats.faultsInjected.Add(1)
		return nil, fmt.Errorf("save batch: %w", faultOutage.err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now().UnixMilli()
	for i, req := range reqs {
		if out[i].Err != nil {
			continue
		}
		if f := m.faults.item(cur); f != faultNone {
			m.stats.faultsInjected.Add(1)
			out[i].Err = fmt.Errorf("save %s: %w", req.ChatID, f.err())
			continue
		}
		res, err := applySave(memTxn{m}, req, valid[i], now)
		m.stats.countSave(res, err)
		if err != nil {
			out[i].Err = fmt.Errorf("save %s: %w", req.ChatID, err)
			continue
		}
		out[i].Result = res
	}
	return out, nil
}

func (t memTxn) tombstone(chatID string) (Tombstone, bool, error) {
	ts, ok := t.m.tombs[chatID]
	return ts, ok, nil
}

func (t memTxn) putTombstone(ts Tombstone) error {
	t.m.tombs[ts.ChatID] = ts
	return nil
}

func (t memTxn) removeChat(chatID string) error {
	delete(t.m.chats, chatID)
	return nil
}

func (t memTxn) chatIDs() ([]string, error) { return slices.Sorted(maps.Keys(t.m.chats)), nil }

func (t memTxn) events(chatID string) ([]*chatpb.Event, error) {
	c, ok := t.m.chats[chatID]
	if !ok {
		return nil, nil
	}
	var out []*chatpb.Event
	for _, idx := range slices.Sorted(maps.Keys(c.events)) {
		out = append(out, proto.CloneOf(c.events[idx].event))
	}
	return out, nil
}

// ExportChat returns one chat with what its customer gave, as
// Client.ExportChat (token ignored).
func (m *MemStore) ExportChat(ctx context.Context, token, chatID string) (ChatExport, error) {
	if err := validChatRef(chatID); err != nil {
		return ChatExport{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return exportChat(memTxn{m}, chatID)
}

// ExportCustomer returns every chat of the customer, as
// Client.ExportCustomer (token ignored).
func (m *MemStore) ExportCustomer(ctx context.Context, token string, c Customer) (CustomerExport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return exportCustomer(memTxn{m}, c)
}

// DeleteChat deletes one chat and leaves its tombstone, as
// Client.DeleteChat (token ignored).
func (m *MemStore) DeleteChat(ctx context.Context, token, chatID string) (DeleteResult, error) {
	if err := validChatRef(chatID); err != nil {
		return DeleteResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ts, already, err := applyDelete(memTxn{m}, chatID, scopeChat, m.now().UnixMilli())
	if err != nil {
		return DeleteResult{}, err
	}
	return deleteResult(ts, already), nil
}

// DeleteCustomer deletes every chat of the customer, as
// Client.DeleteCustomer (token ignored).
func (m *MemStore) DeleteCustomer(ctx context.Context, token string, c Customer) (DeleteResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return applyDeleteCustomer(memTxn{m}, c, m.now().UnixMilli())
}
