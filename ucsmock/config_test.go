package ucsmock

import (
	"flag"
	"testing"
)

func TestConfigFlags(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.HTTPAddr != "127.0.0.1:7080" || cfg.DBPath != ".hachat/ucs.db" || cfg.AdminToken != "" || cfg.MaxBody != 4<<20 || cfg.Store != StoreBolt {
		t.Fatalf("defaults %+v", cfg)
	}
	fs := flag.NewFlagSet("ucs", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"--http=127.0.0.1:1", "--db=x.db", "--admin-token=t", "--max-body=10", "--seed=7", "--store=postgres", "--postgres=host=/s dbname=u"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{HTTPAddr: "127.0.0.1:1", Store: StorePostgres, Postgres: "host=/s dbname=u", DBPath: "x.db", AdminToken: "t", MaxBody: 10, Seed: 7}
	if cfg != want {
		t.Fatalf("parsed %+v, want %+v", cfg, want)
	}
}
