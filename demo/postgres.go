package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hachat/hachat/pgcluster"
)

// UCSStoreState describes the shared store of the ucs instances in the
// state file, when it is a PostgreSQL cluster the demo started.
type UCSStoreState struct {
	// Kind is the store: "postgres".
	Kind string `json:"kind"`
	// PID is the PostgreSQL server's process id.
	PID int `json:"pid"`
	// Dir is the throwaway cluster's directory (removed when the demo stops).
	Dir string `json:"dir"`
	// DSN is the connection string the ucs instances use (a Unix socket,
	// no password: only this user and root can connect).
	DSN string `json:"dsn"`
}

// StartPostgres starts the throwaway PostgreSQL cluster of a plan with
// Layout.UCSStore "postgres" (pgcluster: a temporary directory, a Unix
// socket, as user postgres when run as root), with its server log in
// logDir/postgres.log, and creates the database ucs. Stop the cluster
// after the plan's parts.
func StartPostgres(ctx context.Context, logDir string) (*pgcluster.Cluster, UCSStoreState, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, UCSStoreState{}, fmt.Errorf("log directory: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(logDir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, UCSStoreState{}, fmt.Errorf("postgres log: %w", err)
	}
	c, err := pgcluster.Start(ctx, pgcluster.Options{Log: logf})
	if err != nil {
		logf.Close()
		return nil, UCSStoreState{}, fmt.Errorf("start postgresql: %w", err)
	}
	dsn, err := c.CreateDatabase(ctx, "ucs")
	if err != nil {
		c.Stop()
		logf.Close()
		return nil, UCSStoreState{}, err
	}
	go func() { <-c.Exited(); logf.Close() }()
	return c, UCSStoreState{Kind: "postgres", PID: c.Pid(), Dir: c.Dir(), DSN: dsn}, nil
}
