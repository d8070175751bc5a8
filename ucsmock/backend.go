package ucsmock

import "context"

// Store kinds of Config.Store.
const (
	// StoreBolt is the embedded bbolt database of one ucs process (the
	// default).
	StoreBolt = "bbolt"
	// StorePostgres is a PostgreSQL database that several ucs processes
	// share.
	StorePostgres = "postgres"
)

// backend is the durable store behind a Server: the embedded bbolt
// database (boltStore) or PostgreSQL (pgStore). Both run the same apply
// functions (fencing.go) on a txn, so the rules are written once; what a
// backend adds is atomicity: every write function runs alone against the
// state it reads, or not at all.
type backend interface {
	// kind is StoreBolt or StorePostgres.
	kind() string
	// update runs fn, a transcript save (or a batch of them), in a
	// read-write transaction and returns once it is durable (or failed).
	// A logical rejection (isStorageErr false) written by fn leaves
	// nothing written; a storage error aborts the transaction.
	update(ctx context.Context, fn func(tx txn) error) error
	// updateEpoch is update for an epoch claim or renewal: it holds the
	// service's epoch exclusively against every concurrent save.
	updateEpoch(ctx context.Context, fn func(tx txn) error) error
	// view runs fn in a read-only transaction.
	view(ctx context.Context, fn func(tx txn) error) error
	// transcript reads a chat's transcript; nil if the chat is unknown.
	transcript(ctx context.Context, chatID string) (*Transcript, error)
	// chats lists the stored chats that f keeps, in chat id order.
	chats(ctx context.Context, f ChatFilter) ([]ChatInfo, error)
	// epochs returns every service's epoch.
	epochs(ctx context.Context) (map[string]Epoch, error)
	// healthy is nil while the store can serve (open and, for PostgreSQL,
	// the database reachable).
	healthy(ctx context.Context) error
	// close closes the store; later calls fail with errClosed.
	close() error
}
