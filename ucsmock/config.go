package ucsmock

import "flag"

// Config configures a ucsmock server. The yaml tags equal the flag names.
type Config struct {
	// HTTPAddr is the address of the HTTP API, /metrics and /healthz.
	HTTPAddr string `yaml:"http"`
	// DBPath is the bbolt database file; its directory is created if missing.
	DBPath string `yaml:"db"`
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
	fs.StringVar(&c.DBPath, "db", c.DBPath, "bbolt database file (directory created if missing)")
	fs.StringVar(&c.AdminToken, "admin-token", c.AdminToken, "bearer token of the admin API (faults, stats); empty disables it")
	fs.StringVar(&c.WriterToken, "writer-token", c.WriterToken, "bearer token that transcript saves and epoch claims must carry; empty leaves writes open")
	fs.StringVar(&c.ReaderToken, "reader-token", c.ReaderToken, "bearer token that reads (transcripts, chats, epochs) must carry; the writer token is accepted too; with neither set reads are open")
	fs.Int64Var(&c.MaxBody, "max-body", c.MaxBody, "largest save body in bytes (larger gets 413)")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the random source that draws injected recoverable errors")
}
