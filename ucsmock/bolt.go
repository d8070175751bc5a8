package ucsmock

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// Buckets of the database. transcripts and eventEpochs hold one nested
// bucket per chat, keyed by the event index as 8 big-endian bytes.
var (
	bucketTranscripts = []byte("transcripts")  // chatId -> index -> event record (eventrecord.go)
	bucketEventEpochs = []byte("event-epochs") // chatId -> index -> epoch of a protojson record (older files)
	bucketChats       = []byte("chats")        // chatId -> JSON chatMeta
	bucketEpochs      = []byte("epochs")       // service -> JSON Epoch
	bucketTombstones  = []byte("tombstones")   // chatId -> JSON Tombstone of a deleted chat
)

// appendFill is the fill percent of the buckets of one chat's events,
// which grow by appending (bbolt's default, 0.5, suits random inserts).
const appendFill = 0.95

// maxCommitBatch bounds how many queued writes share one transaction.
const maxCommitBatch = 256

// errClosed is returned for writes after the store closed.
var errClosed = errors.New("store closed")

// boltStore is the durable store: a bbolt database whose writes go through
// one committer goroutine that groups the writes queued at that moment into
// one transaction (group commit): one fsync for many saves, and no added
// delay for a lone save.
type boltStore struct {
	db      *bolt.DB
	writes  chan commitReq
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
	batched func(n int) // observes the size of each group commit

	commits, committed atomic.Uint64 // transactions and the writes they held
}

// commitReq is one queued write. fn must make no write before its last
// check, so that a logical rejection (a returned error that isStorageErr
// does not flag) leaves the transaction clean for the others.
type commitReq struct {
	fn   func(tx txn) error
	done chan error
}

// openBolt opens (creating if needed) the database at path and starts its
// committer. An existing file must pass the integrity check (integrity.go),
// else the error matches ErrCorrupt.
func openBolt(path string, batched func(int)) (*boltStore, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create db directory: %w", err)
		}
	}
	exists, err := checkFile(path)
	if err != nil {
		return nil, fmt.Errorf("open db %s: %w", path, err)
	}
	var db *bolt.DB
	err = guard("open", func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open db %s: %w", path, corruptErr(err))
	}
	if exists {
		if err := checkDB(db); err != nil {
			db.Close()
			return nil, fmt.Errorf("open db %s: %w", path, err)
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTranscripts, bucketEventEpochs, bucketChats, bucketEpochs, bucketTombstones} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create buckets: %w", err)
	}
	if batched == nil {
		batched = func(int) {}
	}
	s := &boltStore{db: db, writes: make(chan commitReq), quit: make(chan struct{}), done: make(chan struct{}), batched: batched}
	go s.commitLoop()
	return s, nil
}

// corruptErr marks bbolt's errors about a damaged file as ErrCorrupt; other
// errors (a lock timeout, a permission) pass unchanged.
func corruptErr(err error) error {
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	for _, e := range []error{berrors.ErrInvalid, berrors.ErrChecksum, berrors.ErrVersionMismatch, berrors.ErrInvalidMapping} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
	}
	return err
}

// close stops the committer (after the write in progress) and closes the db.
func (s *boltStore) close() error {
	var err error
	s.once.Do(func() {
		close(s.quit)
		<-s.done
		if cerr := s.db.Close(); cerr != nil {
			err = fmt.Errorf("close db: %w", cerr)
		}
	})
	return err
}

// update runs fn in a read-write transaction and returns once that
// transaction is committed and synced (or failed). A write queued before ctx
// ends is waited for even if ctx ends meanwhile: the caller learns its fate.
func (s *boltStore) update(ctx context.Context, fn func(tx txn) error) error {
	req := commitReq{fn: fn, done: make(chan error, 1)}
	select {
	case s.writes <- req:
	case <-s.quit:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-req.done
}

// commitLoop is the committer: it takes the first queued write, adds every
// other write already queued (up to maxCommitBatch) and commits them in one
// transaction.
func (s *boltStore) commitLoop() {
	defer close(s.done)
	for {
		var batch []commitReq
		select {
		case r := <-s.writes:
			batch = append(batch, r)
		case <-s.quit:
			return
		}
	fill:
		for len(batch) < maxCommitBatch {
			select {
			case r := <-s.writes:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.batched(len(batch))
		s.commits.Add(1)
		s.committed.Add(uint64(len(batch)))
		results := make([]error, len(batch))
		err := s.db.Update(func(tx *bolt.Tx) error {
			bt := boltTxn{tx: tx, epochs: map[string]Epoch{}, legacyEpochs: hasKeys(tx.Bucket(bucketEventEpochs))}
			for i, r := range batch {
				results[i] = r.fn(bt)
				if isStorageErr(results[i]) {
					return results[i]
				}
			}
			return nil
		})
		for i, r := range batch {
			if err != nil {
				r.done <- fmt.Errorf("commit: %w", err)
				continue
			}
			r.done <- results[i]
		}
	}
}

// isStorageErr reports whether err is a failure of the database rather
// than a logical rejection; it aborts the whole transaction.
func isStorageErr(err error) bool {
	if err == nil {
		return false
	}
	for _, logical := range []error{ErrStaleEpoch, ErrConflict, ErrEpochConflict, ErrInvalid, ErrDeleted} {
		if errors.Is(err, logical) {
			return false
		}
	}
	return true
}

// kind is StoreBolt.
func (s *boltStore) kind() string { return StoreBolt }

// updateEpoch is update: bbolt has one writer at a time.
func (s *boltStore) updateEpoch(ctx context.Context, fn func(tx txn) error) error {
	return s.update(ctx, fn)
}

// healthy is nil until the store closes.
func (s *boltStore) healthy(ctx context.Context) error {
	select {
	case <-s.quit:
		return errClosed
	default:
		return nil
	}
}

// epochs returns every service's epoch.
func (s *boltStore) epochs(ctx context.Context) (map[string]Epoch, error) {
	out := map[string]Epoch{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEpochs).ForEach(func(k, v []byte) error {
			var e Epoch
			if json.Unmarshal(v, &e) == nil {
				out[string(k)] = e
			}
			return nil
		})
	})
	return out, closedErr(err)
}

// view runs fn in a read-only transaction.
func (s *boltStore) view(ctx context.Context, fn func(tx txn) error) error {
	return closedErr(s.db.View(func(tx *bolt.Tx) error { return fn(boltTxn{tx: tx}) }))
}

// closedErr maps bbolt's "database not open" to errClosed.
func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return errClosed
	}
	return err
}

// transcript reads a chat's transcript; nil if the chat is unknown.
func (s *boltStore) transcript(ctx context.Context, chatID string) (*Transcript, error) {
	var t *Transcript
	err := s.db.View(func(tx *bolt.Tx) error {
		meta, ok, err := boltTxn{tx: tx}.chat(chatID)
		if err != nil || !ok {
			return err
		}
		t = &Transcript{ChatID: chatID, Service: meta.Service, Ended: meta.Ended, Writer: meta.Writer, Epoch: meta.Epoch}
		b := tx.Bucket(bucketTranscripts).Bucket([]byte(chatID))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			ev := &chatpb.Event{}
			if _, _, err := decodeEventRecord(v, ev); err != nil {
				return fmt.Errorf("decode event %d of %s: %w", binary.BigEndian.Uint64(k), chatID, err)
			}
			t.Events = append(t.Events, ev)
			return nil
		})
	})
	return t, closedErr(err)
}

// chats lists the stored chats that f keeps, in chat id order.
func (s *boltStore) chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error) {
	var out []ChatInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		bt := boltTxn{tx: tx}
		return tx.Bucket(bucketChats).ForEach(func(k, v []byte) error {
			var m chatMeta
			if err := decodeChatMeta(v, &m); err != nil {
				return fmt.Errorf("decode chat %s: %w", k, err)
			}
			ci := ChatInfo{ChatID: string(k), Service: m.Service, Ended: m.Ended, Writer: m.Writer, Epoch: m.Epoch, UpdatedUnixMs: m.UpdatedUnix}
			if !f.Keep(ci) {
				return nil
			}
			var err error
			if ci.HighestIndex, err = bt.highestIndex(ci.ChatID); err != nil {
				return err
			}
			out = append(out, ci)
			return nil
		})
	})
	return out, closedErr(err)
}

// boltTxn is the txn of a bbolt transaction.
type boltTxn struct {
	tx *bolt.Tx
	// epochs, when not nil, caches the service epochs read or written in
	// the transaction (every write goes through putServiceEpoch): a group
	// commit of many saves of one service decodes its epoch once.
	epochs map[string]Epoch
	// legacyEpochs is false when the event-epochs bucket (older files
	// only) was empty as the transaction began: it never gains entries,
	// so putEvent need not look a chat up in it. A boltTxn of a read-only
	// transaction never writes and leaves it false.
	legacyEpochs bool
}

// hasKeys reports whether b holds any key.
func hasKeys(b *bolt.Bucket) bool {
	k, _ := b.Cursor().First()
	return k != nil
}

func indexKey(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

func (t boltTxn) lockService(service string, epoch uint64) error { return nil }

func (t boltTxn) serviceEpoch(service string) (Epoch, error) {
	if e, ok := t.epochs[service]; ok {
		return e, nil
	}
	var e Epoch
	if v := t.tx.Bucket(bucketEpochs).Get([]byte(service)); v != nil {
		if err := json.Unmarshal(v, &e); err != nil {
			return e, fmt.Errorf("decode epoch of %s: %w", service, err)
		}
	}
	if t.epochs != nil {
		t.epochs[service] = e
	}
	return e, nil
}

func (t boltTxn) putServiceEpoch(service string, e Epoch) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode epoch: %w", err)
	}
	if err := t.tx.Bucket(bucketEpochs).Put([]byte(service), v); err != nil {
		return fmt.Errorf("put epoch of %s: %w", service, err)
	}
	if t.epochs != nil {
		t.epochs[service] = e
	}
	return nil
}

func (t boltTxn) chat(chatID string) (chatMeta, bool, error) {
	var m chatMeta
	v := t.tx.Bucket(bucketChats).Get([]byte(chatID))
	if v == nil {
		return m, false, nil
	}
	if err := decodeChatMeta(v, &m); err != nil {
		return m, false, fmt.Errorf("decode chat %s: %w", chatID, err)
	}
	return m, true, nil
}

func (t boltTxn) putChat(chatID string, m chatMeta) error {
	v, err := encodeChatMeta(m)
	if err != nil {
		return fmt.Errorf("encode chat: %w", err)
	}
	if err := t.tx.Bucket(bucketChats).Put([]byte(chatID), v); err != nil {
		return fmt.Errorf("put chat %s: %w", chatID, err)
	}
	return nil
}

func (t boltTxn) event(chatID string, index uint64) (storedEvent, bool, error) {
	b := t.tx.Bucket(bucketTranscripts).Bucket([]byte(chatID))
	if b == nil {
		return storedEvent{}, false, nil
	}
	k := indexKey(index)
	v := b.Get(k)
	if v == nil {
		return storedEvent{}, false, nil
	}
	se := storedEvent{event: &chatpb.Event{}}
	epoch, embedded, err := decodeEventRecord(v, se.event)
	if err != nil {
		return storedEvent{}, false, fmt.Errorf("decode event %d of %s: %w", index, chatID, err)
	}
	if embedded {
		se.epoch = epoch
		return se, true, nil
	}
	if eb := t.tx.Bucket(bucketEventEpochs).Bucket([]byte(chatID)); eb != nil {
		if ev := eb.Get(k); len(ev) == 8 {
			se.epoch = binary.BigEndian.Uint64(ev)
		}
	}
	return se, true, nil
}

func (t boltTxn) putEvent(chatID string, se storedEvent) error {
	v, err := encodeEventRecord(se.event, se.epoch)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	b, err := t.tx.Bucket(bucketTranscripts).CreateBucketIfNotExists([]byte(chatID))
	if err != nil {
		return fmt.Errorf("create transcript bucket of %s: %w", chatID, err)
	}
	// A transcript grows at its end (indexes only increase): pages split
	// full rather than half full, so that a transcript takes about half
	// the pages and a save rewrites fewer of them.
	b.FillPercent = appendFill
	k := indexKey(se.event.GetIndex())
	if err := b.Put(k, v); err != nil {
		return fmt.Errorf("put event: %w", err)
	}
	// The record carries its epoch: an epoch kept beside the protojson
	// record it replaces (a file written before records did) is stale.
	if !t.legacyEpochs {
		return nil
	}
	if eb := t.tx.Bucket(bucketEventEpochs).Bucket([]byte(chatID)); eb != nil {
		if err := eb.Delete(k); err != nil {
			return fmt.Errorf("delete event epoch: %w", err)
		}
	}
	return nil
}

func (t boltTxn) highestIndex(chatID string) (uint64, error) {
	b := t.tx.Bucket(bucketTranscripts).Bucket([]byte(chatID))
	if b == nil {
		return 0, nil
	}
	k, _ := b.Cursor().Last()
	if len(k) != 8 {
		return 0, nil
	}
	return binary.BigEndian.Uint64(k), nil
}

func (t boltTxn) tombstone(chatID string) (Tombstone, bool, error) {
	var ts Tombstone
	v := t.tx.Bucket(bucketTombstones).Get([]byte(chatID))
	if v == nil {
		return ts, false, nil
	}
	if err := json.Unmarshal(v, &ts); err != nil {
		return ts, false, fmt.Errorf("decode tombstone of %s: %w", chatID, err)
	}
	return ts, true, nil
}

func (t boltTxn) putTombstone(ts Tombstone) error {
	v, err := json.Marshal(ts)
	if err != nil {
		return fmt.Errorf("encode tombstone: %w", err)
	}
	if err := t.tx.Bucket(bucketTombstones).Put([]byte(ts.ChatID), v); err != nil {
		return fmt.Errorf("put tombstone of %s: %w", ts.ChatID, err)
	}
	return nil
}

// removeChat deletes everything stored about the chat: its meta, its
// events and their epochs. bbolt frees the pages; the file does not
// shrink, but the pages are reused and no read can reach the data.
func (t boltTxn) removeChat(chatID string) error {
	if err := t.tx.Bucket(bucketChats).Delete([]byte(chatID)); err != nil {
		return fmt.Errorf("delete chat %s: %w", chatID, err)
	}
	for _, name := range [][]byte{bucketTranscripts, bucketEventEpochs} {
		err := t.tx.Bucket(name).DeleteBucket([]byte(chatID))
		if err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return fmt.Errorf("delete %s of %s: %w", name, chatID, err)
		}
	}
	return nil
}

func (t boltTxn) chatIDs() ([]string, error) {
	var ids []string
	err := t.tx.Bucket(bucketChats).ForEach(func(k, _ []byte) error {
		ids = append(ids, string(k))
		return nil
	})
	return ids, err
}

func (t boltTxn) events(chatID string) ([]*chatpb.Event, error) {
	b := t.tx.Bucket(bucketTranscripts).Bucket([]byte(chatID))
	if b == nil {
		return nil, nil
	}
	var out []*chatpb.Event
	err := b.ForEach(func(k, v []byte) error {
		ev := &chatpb.Event{}
		if _, _, err := decodeEventRecord(v, ev); err != nil {
			return fmt.Errorf("decode event %d of %s: %w", binary.BigEndian.Uint64(k), chatID, err)
		}
		out = append(out, ev)
		return nil
	})
	return out, err
}
