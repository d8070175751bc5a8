package ucsmock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// The PostgreSQL store. Several ucs processes share one database, so the
// atomicity that bbolt gets from its single writer comes from PostgreSQL's
// transactions and locks:
//
//   - every save runs in one transaction that first takes a transaction
//     lock on its service's epoch (pg_advisory_xact_lock_shared; exclusive
//     when the save carries an epoch newer than the stored one, so it may
//     raise it), then a lock on its chat (exclusive), then checks and
//     writes. An epoch claim or renewal takes the service's lock
//     exclusively. So a claim waits for the saves in flight and every save
//     after it reads the claimed epoch: a save with a stale epoch is
//     refused in the same transaction as its check, and two ucs instances
//     cannot both accept conflicting writes to one chat.
//   - a GDPR delete (gdpr.go) locks the chat as a save does, before it
//     reads the chat's tombstone; a save reads the tombstone under the
//     chat's lock too, so a save and a delete of one chat never overlap:
//     a deleted chat stays deleted whichever instance a late save reaches.
//   - a transaction that PostgreSQL aborts for a deadlock or a
//     serialization failure (two overlapping batches, two saves raising
//     the epoch) is retried from the start, up to pgRetries times.
//   - the apply functions of fencing.go run unchanged on a pgTxn.
//
// Epochs and indexes are uint64: they are stored as numeric(20,0), passed
// and read as decimal text. Events are stored as protobuf bytes.

// pgSchemaVersion is the version of the tables below, kept in ucs_schema.
const pgSchemaVersion = 1

// pgSchema creates the tables; it runs at every open, under a lock, so that
// instances starting together do not race.
const pgSchema = `
CREATE TABLE IF NOT EXISTS ucs_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS ucs_epochs (
	service text PRIMARY KEY,
	epoch numeric(20,0) NOT NULL CHECK (epoch >= 0),
	holder text NOT NULL,
	heard_unix_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS ucs_chats (
	chat_id text PRIMARY KEY,
	service text NOT NULL,
	ended boolean NOT NULL,
	writer text NOT NULL,
	epoch numeric(20,0) NOT NULL CHECK (epoch >= 0),
	updated_unix_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS ucs_events (
	chat_id text NOT NULL,
	idx numeric(20,0) NOT NULL CHECK (idx >= 1),
	epoch numeric(20,0) NOT NULL CHECK (epoch >= 0),
	event bytea NOT NULL,
	PRIMARY KEY (chat_id, idx)
);
CREATE TABLE IF NOT EXISTS ucs_tombstones (
	chat_id text PRIMARY KEY,
	service text NOT NULL,
	epoch numeric(20,0) NOT NULL CHECK (epoch >= 0),
	deleted_unix_ms bigint NOT NULL,
	events integer NOT NULL CHECK (events >= 0),
	scope text NOT NULL
);
`

// Advisory lock classes (the first key of pg_advisory_xact_lock(int, int)).
const (
	pgLockSchema  = 0x55435300 // "UCS\0": schema creation
	pgLockService = 1          // a service's epoch
	pgLockChat    = 2          // a chat
)

// pgRetries bounds the retries of a transaction aborted by a deadlock or a
// serialization failure.
const pgRetries = 5

// pgStore is the PostgreSQL store.
type pgStore struct {
	pool    *pgxpool.Pool
	batched func(n int)
	quit    chan struct{}
	once    sync.Once
	// beforeCommit, if set (by tests), runs in every write transaction
	// after its checks and writes, before its commit.
	beforeCommit func()
}

// openStore opens the store cfg names.
func openStore(cfg Config, m *metrics) (backend, error) {
	batched := func(n int) { m.batch.Observe(float64(n)) }
	if cfg.Store == StorePostgres {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return openPG(ctx, cfg.Postgres, batched)
	}
	return openBolt(cfg.DBPath, batched)
}

// openPG connects to the database at dsn, creates the tables if needed and
// checks them (pgCheck).
func openPG(ctx context.Context, dsn string, batched func(int)) (*pgStore, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres connection string: %w", err)
	}
	if pc.MaxConns < 32 && !regexp.MustCompile(`pool_max_conns`).MatchString(dsn) {
		pc.MaxConns = 32
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect postgres %s: %w", redactDSN(dsn), err)
	}
	if batched == nil {
		batched = func(int) {}
	}
	s := &pgStore{pool: pool, batched: batched, quit: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", redactDSN(dsn), err)
	}
	if err := s.check(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", redactDSN(dsn), err)
	}
	return s, nil
}

// migrate creates the tables and records the schema version; a database of
// another version is refused.
func (s *pgStore) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(pgLockSchema)); err != nil {
			return fmt.Errorf("lock schema: %w", err)
		}
		if _, err := tx.Exec(ctx, pgSchema); err != nil {
			return fmt.Errorf("create tables: %w", err)
		}
		var v int
		err := tx.QueryRow(ctx, "SELECT version FROM ucs_schema").Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			_, err = tx.Exec(ctx, "INSERT INTO ucs_schema (version) VALUES ($1)", pgSchemaVersion)
			return err
		case err != nil:
			return fmt.Errorf("read schema version: %w", err)
		case v != pgSchemaVersion:
			return fmt.Errorf("schema version %d, this ucs knows %d", v, pgSchemaVersion)
		}
		return nil
	})
}

// check is the integrity check at open, the counterpart of bbolt's (which
// PostgreSQL's own page checksums, initdb --data-checksums, stand for at
// the storage level): every event belongs to a stored chat, no chat's
// epoch is older than its events', and the newest event of each chat
// decodes. A failure matches ErrCorrupt.
func (s *pgStore) check(ctx context.Context) error {
	var orphans, behind, undead int64
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM ucs_events e WHERE NOT EXISTS (SELECT 1 FROM ucs_chats c WHERE c.chat_id = e.chat_id)),
		(SELECT count(*) FROM ucs_chats c WHERE c.epoch < (SELECT coalesce(max(e.epoch), 0) FROM ucs_events e WHERE e.chat_id = c.chat_id)),
		(SELECT count(*) FROM ucs_chats c JOIN ucs_tombstones t ON t.chat_id = c.chat_id)`).Scan(&orphans, &behind, &undead)
	if err != nil {
		return fmt.Errorf("integrity check: %w", err)
	}
	if undead > 0 {
		return fmt.Errorf("%w: %d deleted chats (tombstoned) still stored", ErrCorrupt, undead)
	}
	if orphans > 0 {
		return fmt.Errorf("%w: %d events of no stored chat", ErrCorrupt, orphans)
	}
	if behind > 0 {
		return fmt.Errorf("%w: %d chats older than their events' epoch", ErrCorrupt, behind)
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT ON (e.chat_id) e.chat_id, e.idx::text, e.event FROM ucs_events e ORDER BY e.chat_id, e.idx DESC`)
	if err != nil {
		return fmt.Errorf("integrity check: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var chat, idx string
		var b []byte
		if err := rows.Scan(&chat, &idx, &b); err != nil {
			return fmt.Errorf("integrity check: %w", err)
		}
		if _, err := decodePGEvent(chat, idx, b); err != nil {
			return err
		}
	}
	return rows.Err()
}

// decodePGEvent decodes a stored event and checks it is where it is stored.
func decodePGEvent(chat, idx string, b []byte) (*chatpb.Event, error) {
	ev := &chatpb.Event{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return nil, fmt.Errorf("%w: event %s of chat %q: undecodable", ErrCorrupt, idx, chat)
	}
	if strconv.FormatUint(ev.GetIndex(), 10) != idx || ev.GetSessionId() != chat {
		return nil, fmt.Errorf("%w: event %s of chat %q: holds index %d of %q", ErrCorrupt, idx, chat, ev.GetIndex(), ev.GetSessionId())
	}
	return ev, nil
}

func (s *pgStore) kind() string { return StorePostgres }

// isClosed reports whether close was called.
func (s *pgStore) isClosed() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

func (s *pgStore) update(ctx context.Context, fn func(tx txn) error) error {
	return s.write(ctx, false, fn)
}

func (s *pgStore) updateEpoch(ctx context.Context, fn func(tx txn) error) error {
	return s.write(ctx, true, fn)
}

// write runs fn in a transaction, retried on a deadlock or serialization
// failure. exclusive locks every service fn reads exclusively.
func (s *pgStore) write(ctx context.Context, exclusive bool, fn func(tx txn) error) error {
	if s.isClosed() {
		return errClosed
	}
	var err error
	for attempt := 0; attempt < pgRetries; attempt++ {
		var fnErr error
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			t := &pgTxn{ctx: ctx, tx: tx, write: true, exclusive: exclusive, services: map[string]bool{}, chatsLocked: map[string]bool{}}
			fnErr = fn(t)
			if fnErr != nil {
				return fnErr // roll back: a logical rejection wrote nothing anyway
			}
			if s.beforeCommit != nil {
				s.beforeCommit()
			}
			return nil
		})
		if fnErr != nil && !isStorageErr(fnErr) {
			return fnErr
		}
		if !retryable(err) {
			break
		}
	}
	if err != nil {
		if s.isClosed() {
			return errClosed
		}
		return fmt.Errorf("postgres: %w", err)
	}
	s.batched(1)
	return nil
}

// retryable reports whether PostgreSQL aborted the transaction for a
// deadlock or a serialization failure, which a retry resolves.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (s *pgStore) view(ctx context.Context, fn func(tx txn) error) error {
	if s.isClosed() {
		return errClosed
	}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		return fn(&pgTxn{ctx: ctx, tx: tx})
	})
	if err != nil && s.isClosed() {
		return errClosed
	}
	return err
}

func (s *pgStore) transcript(ctx context.Context, chatID string) (*Transcript, error) {
	var t *Transcript
	err := s.view(ctx, func(tx txn) error {
		pt := tx.(*pgTxn)
		meta, ok, err := pt.chat(chatID)
		if err != nil || !ok {
			return err
		}
		t = &Transcript{ChatID: chatID, Service: meta.Service, Ended: meta.Ended, Writer: meta.Writer, Epoch: meta.Epoch}
		rows, err := pt.tx.Query(ctx, "SELECT e.idx::text, e.event FROM ucs_events e WHERE e.chat_id = $1 ORDER BY e.idx", chatID)
		if err != nil {
			return fmt.Errorf("read events of %s: %w", chatID, err)
		}
		defer rows.Close()
		for rows.Next() {
			var idx string
			var b []byte
			if err := rows.Scan(&idx, &b); err != nil {
				return fmt.Errorf("read events of %s: %w", chatID, err)
			}
			ev, err := decodePGEvent(chatID, idx, b)
			if err != nil {
				return err
			}
			t.Events = append(t.Events, ev)
		}
		return rows.Err()
	})
	return t, err
}

func (s *pgStore) chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error) {
	var out []ChatInfo
	err := s.view(ctx, func(tx txn) error {
		out = nil
		rows, err := tx.(*pgTxn).tx.Query(ctx, `SELECT c.chat_id, c.service, c.ended, c.writer, c.epoch::text, c.updated_unix_ms,
			(SELECT coalesce(max(e.idx), 0)::text FROM ucs_events e WHERE e.chat_id = c.chat_id)
			FROM ucs_chats c ORDER BY c.chat_id COLLATE "C"`)
		if err != nil {
			return fmt.Errorf("list chats: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var ci ChatInfo
			var epoch, high string
			if err := rows.Scan(&ci.ChatID, &ci.Service, &ci.Ended, &ci.Writer, &epoch, &ci.UpdatedUnixMs, &high); err != nil {
				return fmt.Errorf("list chats: %w", err)
			}
			var err1, err2 error
			ci.Epoch, err1 = strconv.ParseUint(epoch, 10, 64)
			ci.HighestIndex, err2 = strconv.ParseUint(high, 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return fmt.Errorf("%w: chat %q: %v", ErrCorrupt, ci.ChatID, err)
			}
			if f.Keep(ci) {
				out = append(out, ci)
			}
		}
		return rows.Err()
	})
	return out, err
}

func (s *pgStore) epochs(ctx context.Context) (map[string]Epoch, error) {
	out := map[string]Epoch{}
	rows, err := s.pool.Query(ctx, "SELECT service, epoch::text, holder, heard_unix_ms FROM ucs_epochs")
	if err != nil {
		return nil, fmt.Errorf("read epochs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var svc, epoch string
		var e Epoch
		if err := rows.Scan(&svc, &epoch, &e.Holder, &e.HeardUnixMs); err != nil {
			return nil, fmt.Errorf("read epochs: %w", err)
		}
		if e.Epoch, err = strconv.ParseUint(epoch, 10, 64); err != nil {
			return nil, fmt.Errorf("%w: epoch of %q: %v", ErrCorrupt, svc, err)
		}
		out[svc] = e
	}
	return out, rows.Err()
}

func (s *pgStore) healthy(ctx context.Context) error {
	if s.isClosed() {
		return errClosed
	}
	return s.pool.Ping(ctx)
}

func (s *pgStore) close() error {
	s.once.Do(func() {
		close(s.quit)
		s.pool.Close()
	})
	return nil
}

// pgTxn is the txn of a PostgreSQL transaction. In a write transaction it
// takes the locks described at the top of this file, each once.
type pgTxn struct {
	ctx         context.Context
	tx          pgx.Tx
	write       bool
	exclusive   bool            // lock services exclusively (claims, renewals)
	services    map[string]bool // services locked: true if exclusively
	chatsLocked map[string]bool
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }

// lockServiceMode takes the service's epoch lock, shared or exclusive; an
// exclusive request after a shared one upgrades (a deadlock that causes is
// resolved by PostgreSQL and retried by write).
func (t *pgTxn) lockServiceMode(service string, exclusive bool) error {
	if !t.write {
		return nil
	}
	held, ok := t.services[service]
	if ok && (held || !exclusive) {
		return nil
	}
	q := "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))"
	if exclusive {
		q = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
	}
	if _, err := t.tx.Exec(t.ctx, q, int32(pgLockService), service); err != nil {
		return fmt.Errorf("lock epoch of %s: %w", service, err)
	}
	t.services[service] = exclusive
	return nil
}

// lockService takes the service's lock for a save with epoch: exclusive
// when the save may raise the stored epoch, else shared. Epochs only grow,
// so a save found not to raise it under no lock never needs to.
func (t *pgTxn) lockService(service string, epoch uint64) error {
	if !t.write {
		return nil
	}
	if _, ok := t.services[service]; ok {
		return t.lockServiceMode(service, t.exclusive)
	}
	cur, err := t.readEpoch(service)
	if err != nil {
		return err
	}
	return t.lockServiceMode(service, t.exclusive || epoch > cur.Epoch)
}

func (t *pgTxn) readEpoch(service string) (Epoch, error) {
	var e Epoch
	var epoch string
	err := t.tx.QueryRow(t.ctx, "SELECT epoch::text, holder, heard_unix_ms FROM ucs_epochs WHERE service = $1", service).Scan(&epoch, &e.Holder, &e.HeardUnixMs)
	if errors.Is(err, pgx.ErrNoRows) {
		return Epoch{}, nil
	}
	if err != nil {
		return e, fmt.Errorf("read epoch of %s: %w", service, err)
	}
	if e.Epoch, err = strconv.ParseUint(epoch, 10, 64); err != nil {
		return e, fmt.Errorf("%w: epoch of %q: %v", ErrCorrupt, service, err)
	}
	return e, nil
}

func (t *pgTxn) serviceEpoch(service string) (Epoch, error) {
	if _, ok := t.services[service]; !ok && t.write {
		if err := t.lockServiceMode(service, t.exclusive); err != nil {
			return Epoch{}, err
		}
	}
	return t.readEpoch(service)
}

func (t *pgTxn) putServiceEpoch(service string, e Epoch) error {
	if err := t.lockServiceMode(service, true); err != nil {
		return err
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO ucs_epochs (service, epoch, holder, heard_unix_ms) VALUES ($1, $2::text::numeric, $3, $4)
		ON CONFLICT (service) DO UPDATE SET epoch = excluded.epoch, holder = excluded.holder, heard_unix_ms = excluded.heard_unix_ms`,
		service, u64(e.Epoch), e.Holder, e.HeardUnixMs)
	if err != nil {
		return fmt.Errorf("put epoch of %s: %w", service, err)
	}
	return nil
}

// lockChat takes the chat's lock (exclusive) in a write transaction, once.
func (t *pgTxn) lockChat(chatID string) error {
	if !t.write || t.chatsLocked[chatID] {
		return nil
	}
	if _, err := t.tx.Exec(t.ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", int32(pgLockChat), chatID); err != nil {
		return fmt.Errorf("lock chat %s: %w", chatID, err)
	}
	t.chatsLocked[chatID] = true
	return nil
}

func (t *pgTxn) chat(chatID string) (chatMeta, bool, error) {
	var m chatMeta
	if err := t.lockChat(chatID); err != nil {
		return m, false, err
	}
	var epoch string
	err := t.tx.QueryRow(t.ctx, "SELECT service, ended, writer, epoch::text, updated_unix_ms FROM ucs_chats WHERE chat_id = $1", chatID).
		Scan(&m.Service, &m.Ended, &m.Writer, &epoch, &m.UpdatedUnix)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read chat %s: %w", chatID, err)
	}
	if m.Epoch, err = strconv.ParseUint(epoch, 10, 64); err != nil {
		return m, false, fmt.Errorf("%w: chat %q: %v", ErrCorrupt, chatID, err)
	}
	return m, true, nil
}

func (t *pgTxn) putChat(chatID string, m chatMeta) error {
	_, err := t.tx.Exec(t.ctx, `INSERT INTO ucs_chats (chat_id, service, ended, writer, epoch, updated_unix_ms) VALUES ($1, $2, $3, $4, $5::text::numeric, $6)
		ON CONFLICT (chat_id) DO UPDATE SET service = excluded.service, ended = excluded.ended, writer = excluded.writer,
		epoch = excluded.epoch, updated_unix_ms = excluded.updated_unix_ms`,
		chatID, m.Service, m.Ended, m.Writer, u64(m.Epoch), m.UpdatedUnix)
	if err != nil {
		return fmt.Errorf("put chat %s: %w", chatID, err)
	}
	return nil
}

func (t *pgTxn) event(chatID string, index uint64) (storedEvent, bool, error) {
	var epoch string
	var b []byte
	err := t.tx.QueryRow(t.ctx, "SELECT epoch::text, event FROM ucs_events WHERE chat_id = $1 AND idx = $2::text::numeric", chatID, u64(index)).Scan(&epoch, &b)
	if errors.Is(err, pgx.ErrNoRows) {
		return storedEvent{}, false, nil
	}
	if err != nil {
		return storedEvent{}, false, fmt.Errorf("read event %d of %s: %w", index, chatID, err)
	}
	ev, err := decodePGEvent(chatID, u64(index), b)
	if err != nil {
		return storedEvent{}, false, err
	}
	se := storedEvent{event: ev}
	if se.epoch, err = strconv.ParseUint(epoch, 10, 64); err != nil {
		return storedEvent{}, false, fmt.Errorf("%w: epoch of event %d of %q: %v", ErrCorrupt, index, chatID, err)
	}
	return se, true, nil
}

func (t *pgTxn) putEvent(chatID string, se storedEvent) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(se.event)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO ucs_events (chat_id, idx, epoch, event) VALUES ($1, $2::text::numeric, $3::text::numeric, $4)
		ON CONFLICT (chat_id, idx) DO UPDATE SET epoch = excluded.epoch, event = excluded.event`,
		chatID, u64(se.event.GetIndex()), u64(se.epoch), b)
	if err != nil {
		return fmt.Errorf("put event %d of %s: %w", se.event.GetIndex(), chatID, err)
	}
	return nil
}

func (t *pgTxn) highestIndex(chatID string) (uint64, error) {
	var high string
	if err := t.tx.QueryRow(t.ctx, "SELECT coalesce(max(idx), 0)::text FROM ucs_events WHERE chat_id = $1", chatID).Scan(&high); err != nil {
		return 0, fmt.Errorf("highest index of %s: %w", chatID, err)
	}
	v, err := strconv.ParseUint(high, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: highest index of %q: %v", ErrCorrupt, chatID, err)
	}
	return v, nil
}

func (t *pgTxn) tombstone(chatID string) (Tombstone, bool, error) {
	ts := Tombstone{ChatID: chatID}
	if err := t.lockChat(chatID); err != nil {
		return ts, false, err
	}
	var epoch string
	err := t.tx.QueryRow(t.ctx, "SELECT service, epoch::text, deleted_unix_ms, events, scope FROM ucs_tombstones WHERE chat_id = $1", chatID).
		Scan(&ts.Service, &epoch, &ts.DeletedUnixMs, &ts.Events, &ts.Scope)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tombstone{}, false, nil
	}
	if err != nil {
		return ts, false, fmt.Errorf("read tombstone of %s: %w", chatID, err)
	}
	if ts.Epoch, err = strconv.ParseUint(epoch, 10, 64); err != nil {
		return ts, false, fmt.Errorf("%w: tombstone of %q: %v", ErrCorrupt, chatID, err)
	}
	return ts, true, nil
}

func (t *pgTxn) putTombstone(ts Tombstone) error {
	_, err := t.tx.Exec(t.ctx, `INSERT INTO ucs_tombstones (chat_id, service, epoch, deleted_unix_ms, events, scope) VALUES ($1, $2, $3::text::numeric, $4, $5, $6)
		ON CONFLICT (chat_id) DO NOTHING`, ts.ChatID, ts.Service, u64(ts.Epoch), ts.DeletedUnixMs, ts.Events, ts.Scope)
	if err != nil {
		return fmt.Errorf("put tombstone of %s: %w", ts.ChatID, err)
	}
	return nil
}

// removeChat deletes the chat's meta and events. PostgreSQL marks the rows
// dead at once (no read reaches them) and vacuum reclaims the space.
func (t *pgTxn) removeChat(chatID string) error {
	if err := t.lockChat(chatID); err != nil {
		return err
	}
	if _, err := t.tx.Exec(t.ctx, "DELETE FROM ucs_events WHERE chat_id = $1", chatID); err != nil {
		return fmt.Errorf("delete events of %s: %w", chatID, err)
	}
	if _, err := t.tx.Exec(t.ctx, "DELETE FROM ucs_chats WHERE chat_id = $1", chatID); err != nil {
		return fmt.Errorf("delete chat %s: %w", chatID, err)
	}
	return nil
}

func (t *pgTxn) chatIDs() ([]string, error) {
	rows, err := t.tx.Query(t.ctx, `SELECT chat_id FROM ucs_chats ORDER BY chat_id COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("list chats: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list chats: %w", err)
	}
	return ids, nil
}

func (t *pgTxn) events(chatID string) ([]*chatpb.Event, error) {
	rows, err := t.tx.Query(t.ctx, "SELECT e.idx::text, e.event FROM ucs_events e WHERE e.chat_id = $1 ORDER BY e.idx", chatID)
	if err != nil {
		return nil, fmt.Errorf("read events of %s: %w", chatID, err)
	}
	defer rows.Close()
	var out []*chatpb.Event
	for rows.Next() {
		var idx string
		var b []byte
		if err := rows.Scan(&idx, &b); err != nil {
			return nil, fmt.Errorf("read events of %s: %w", chatID, err)
		}
		ev, err := decodePGEvent(chatID, idx, b)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events of %s: %w", chatID, err)
	}
	return out, nil
}

// redactDSN hides the password of a connection string, for logs.
func redactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		return u.String()
	}
	return regexp.MustCompile(`password=('[^']*'|\S*)`).ReplaceAllString(dsn, "password=xxxxx")
}
