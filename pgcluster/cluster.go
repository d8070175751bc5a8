// Package pgcluster starts a throwaway PostgreSQL cluster from the Debian
// packages (initdb and postgres under /usr/lib/postgresql/<version>/bin) in
// a directory of its own: the store of `hachat demo --ucs-store postgres`,
// of the ucsmock tests and of the end-to-end tests, started in one place.
//
// The cluster listens on a Unix socket only, in a directory readable by its
// owner alone, with trust authentication: only the user that runs it (and
// root) can connect, and nothing listens on the network. PostgreSQL refuses
// to run as root, so when the caller is root the cluster runs as the
// unprivileged user the Debian package creates (postgres), with its
// directory handed to that user.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled means no PostgreSQL server binaries were found: install
// the Debian package postgresql (make deps does).
var ErrNotInstalled = errors.New("postgresql is not installed (apt-get install postgresql)")

// Options configures a cluster. The zero value is usable.
type Options struct {
	// BinDir holds initdb and postgres; empty finds the newest
	// /usr/lib/postgresql/*/bin.
	BinDir string
	// Dir is where the cluster lives; empty makes a temporary directory that
	// Stop removes. A given Dir is kept by Stop.
	Dir string
	// User runs the server when the caller is root; empty means postgres.
	User string
	// Log receives the server's output; nil discards it.
	Log io.Writer
}

// Cluster is a running PostgreSQL cluster. Stop it.
type Cluster struct {
	dir, sockDir string
	removeDir    bool
	cmd          *exec.Cmd
	exited       chan struct{}
	waitErr      error
	stopOnce     sync.Once
	stopErr      error
}

// port is the port number in the socket's name (.s.PGSQL.<port>); nothing
// listens on it, the socket directory is the cluster's own.
const port = 5432

// FindBinDir returns the bin directory of the newest PostgreSQL installed
// from Debian's packages, or an error matching ErrNotInstalled.
func FindBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var ok []string
	for _, d := range dirs {
		if fi, err := os.Stat(filepath.Join(d, "postgres")); err == nil && fi.Mode()&0o111 != 0 {
			ok = append(ok, d)
		}
	}
	if len(ok) == 0 {
		return "", ErrNotInstalled
	}
	sort.Slice(ok, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(ok[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(ok[j])))
		return vi < vj
	})
	return ok[len(ok)-1], nil
}

// Start creates a new cluster (initdb) and starts its server, returning
// once it accepts connections or ctx ends. The server is stopped by Stop,
// and with SIGQUIT (immediate shutdown) if the calling process dies first.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin := opts.BinDir
	if bin == "" {
		var err error
		if bin, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	cred, err := runAs(opts.User)
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: opts.Dir, exited: make(chan struct{})}
	// The server's user must reach its directories: under a TMPDIR only
	// root can enter, use /tmp.
	tmp := os.TempDir()
	if cred != nil && !searchable(tmp) {
		tmp = "/tmp"
	}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp(tmp, "hachat-pg-"); err != nil {
			return nil, fmt.Errorf("make cluster directory: %w", err)
		}
		c.removeDir = true
	} else if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("make cluster directory: %w", err)
	}
	fail := func(err error) (*Cluster, error) {
		if c.removeDir {
			os.RemoveAll(c.dir)
		}
		return nil, err
	}
	// The socket lives in a short temporary directory: a socket path is
	// limited to 107 bytes, and Dir may be deep.
	if c.sockDir, err = os.MkdirTemp(tmp, "hachat-pgs-"); err != nil {
		return fail(fmt.Errorf("make socket directory: %w", err))
	}
	data := filepath.Join(c.dir, "data")
	if cred != nil {
		for _, d := range []string{c.dir, c.sockDir} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				os.RemoveAll(c.sockDir)
				return fail(fmt.Errorf("hand %s to uid %d: %w", d, cred.Uid, err))
			}
		}
	}
	out := opts.Log
	if out == nil {
		out = io.Discard
	}
	env := []string{"LANG=C", "LC_ALL=C", "PATH=/usr/bin:/bin", "HOME=" + c.dir}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--data-checksums", "--no-sync")
	initdb.Env, initdb.Dir = env, c.dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if b, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(c.sockDir)
		return fail(fmt.Errorf("initdb: %w: %s", err, tail(b)))
	}
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", c.sockDir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=", "-c", "unix_socket_permissions=0700", "-c", "max_connections=200",
		"-c", "shared_buffers=32MB", "-c", "fsync=on", "-c", "synchronous_commit=on")
	c.cmd.Env, c.cmd.Dir = env, c.dir
	c.cmd.Stdout, c.cmd.Stderr = out, out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		os.RemoveAll(c.sockDir)
		return fail(fmt.Errorf("start postgres: %w", err))
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	if err := c.waitReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// runAs returns the credential to run the server with: nil when the caller
// is not root, else the given user's (postgres by default).
func runAs(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("postgres refuses to run as root and user %s is missing (apt-get install postgresql creates it): %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return nil, fmt.Errorf("user %s: unusable uid %s gid %s", name, u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// searchable reports whether any user can enter dir and each of its
// parents (the execute bit for others on every one).
func searchable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// waitReady polls until the server accepts a connection.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.DSN("postgres"))
		ccancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		last = err
		select {
		case <-c.exited:
			return fmt.Errorf("postgres exited before it was ready: %v", c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("postgres not ready: %w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// DSN returns the connection string of database db on the cluster, as user
// postgres over the Unix socket.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", c.sockDir, port, db)
}

// Dir returns the cluster's directory.
func (c *Cluster) Dir() string { return c.dir }

// Pid returns the server's process id.
func (c *Cluster) Pid() int { return c.cmd.Process.Pid }

// Exited is closed when the server process exits.
func (c *Cluster) Exited() <-chan struct{} { return c.exited }

// CreateDatabase creates database name (a plain identifier: letters,
// digits, underscore) and returns its DSN.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	for _, r := range name {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return "", fmt.Errorf("database name %q: want lowercase letters, digits and _", name)
		}
	}
	if name == "" {
		return "", errors.New("empty database name")
	}
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return c.DSN(name), nil
}

// Stop shuts the server down (fast shutdown: SIGINT; SIGKILL after 10 s)
// and removes the directories it made. It is idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.exited
			c.stopErr = errors.New("postgres did not stop within 10s: killed")
		}
		os.RemoveAll(c.sockDir)
		if c.removeDir {
			if err := os.RemoveAll(c.dir); err != nil && c.stopErr == nil {
				c.stopErr = fmt.Errorf("remove cluster directory: %w", err)
			}
		}
	})
	return c.stopErr
}

// tail returns the last lines of a command's output for an error.
func tail(b []byte) string {
	const n = 600
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
