package ucsmock

import (
	"errors"
	"flag"
	"fmt"
)

// Config configures a ucsmock server. The yaml tags equal the flag names.
type Config struct {
	// HTTPAddr is the address of the HTTP API, /metrics and /healthz.
	HTTPAddr string `yaml:"http"`
	// Store is the store: StoreBolt (the default: the bbolt file DBPath,
	// one ucs process) or StorePostgres (the database Postgres, which
	// several ucs processes share).
	Store string `yaml:"store"`
	// DBPath is the bbolt database file; its directory is created if missing.
	DBPath string `yaml:"db"`
	// Postgres is the PostgreSQL connection string (a libpq DSN or a
	// postgres:// URL) of the StorePostgres store.
	Postgres string `yaml:"postgres"`
	// AdminToken guards the admin API (Authorization: Bearer <token>). Empty
	// disables the admin API: every admin request gets 403.
	AdminToken string `yaml:"admin-token"`
	// WriterToken guards the writes: transcript saves and epoch claims need
	// Authorization: Bearer <token>, or get 401 and change nothing. Empty
	// (the default) leaves writes open, as before the token existed.
	WriterToken string `yaml:"writer-token"`
	// ReaderToken guards the reads (GET /ucs/v1/transcripts/{chatId},
	// /ucs/v1/chats, /ucs/v1/epochs/{service}): they need Authorization:
	// Bearer with the reader token or the writer token (a core reads what it
	// wrote, to restore sessions, with the one token it has), or get 401.
	// With neither token set, reads are open; with only the writer token
	// set, reads need the writer token. /healthz and /metrics stay open.
	ReaderToken string `yaml:"reader-token"`
	// MaxBody bounds the body of a save in bytes; a larger one gets 413.
	MaxBody int64 `yaml:"max-body"`
	// Seed seeds the random source that draws injected recoverable errors,
	// so that a fault run is reproducible.
	Seed uint64 `yaml:"seed"`
}

// DefaultConfig returns the defaults: the API on 127.0.0.1:7080 (the demo's
// ucs port), the database in .hachat/ucs.db, the admin API disabled, writes
// and reads open (no writer or reader token: ucs warns at start), saves up
// to 4 MiB, seed 1.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:   "127.0.0.1:7080",
		Store:      StoreBolt,
		DBPath:     ".hachat/ucs.db",
		AdminToken: "",
		MaxBody:    4 << 20,
		Seed:       1,
	}
}

// RegisterFlags binds the config fields to flags on fs; the current values
// are the defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPAddr, "http", c.HTTPAddr, "HTTP address of the UCS API, /metrics and /healthz")
	fs.StringVar(&c.Store, "store", c.Store, "the store: bbolt (the file --db, one ucs process) or postgres (the database --postgres, shared by several ucs processes)")
	fs.StringVar(&c.DBPath, "db", c.DBPath, "bbolt database file (directory created if missing)")
	fs.StringVar(&c.Postgres, "postgres", c.Postgres, "PostgreSQL connection string (DSN or postgres:// URL) of --store postgres")
	fs.StringVar(&c.AdminToken, "admin-token", c.AdminToken, "bearer token of the admin API (faults, stats); empty disables it")
	fs.StringVar(&c.WriterToken, "writer-token", c.WriterToken, "bearer token that transcript saves and epoch claims must carry; empty leaves writes open")
	fs.StringVar(&c.ReaderToken, "reader-token", c.ReaderToken, "bearer token that reads (transcripts, chats, epochs) must carry; the writer token is accepted too; with neither set reads are open")
	fs.Int64Var(&c.MaxBody, "max-body", c.MaxBody, "largest save body in bytes (larger gets 413)")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the random source that draws injected recoverable errors")
}

// validateStore checks the store settings.
func (c Config) validateStore() error {
	switch c.Store {
	case StoreBolt, "":
		if c.DBPath == "" {
			return errors.New("db path is empty")
		}
	case StorePostgres:
		if c.Postgres == "" {
			return errors.New("--store postgres needs --postgres (a connection string)")
		}
	default:
		return fmt.Errorf("unknown store %q: want %s or %s", c.Store, StoreBolt, StorePostgres)
	}
	return nil
}

// storeWhere names the store's location for the log, without a password.
func (c Config) storeWhere() string {
	if c.Store == StorePostgres {
		return redactDSN(c.Postgres)
	}
	return c.DBPath
}
