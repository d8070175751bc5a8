package pgcluster

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStartStop starts a cluster, writes and reads a row in a new database,
// and checks that Stop ends the server and removes its directory.
func TestStartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	dsn, err := c.CreateDatabase(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query: %d %v", n, err)
	}
	conn.Close(ctx)
	for _, bad := range []string{"", "a;b", "Drop"} {
		if _, err := c.CreateDatabase(ctx, bad); err == nil {
			t.Errorf("CreateDatabase(%q) accepted", bad)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Exited():
	default:
		t.Fatal("server still running after Stop")
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Fatalf("cluster directory left behind: %v", err)
	}
}

// TestStartUnderPrivateTMPDIR: as root, with TMPDIR a directory only root
// can enter, the cluster (run as user postgres) still starts: it falls
// back to /tmp.
func TestStartUnderPrivateTMPDIR(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs the server as another user")
	}
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", private)
	if searchable(private) {
		t.Fatal("a 0700 directory reads as searchable")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
}
