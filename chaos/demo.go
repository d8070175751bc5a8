package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Demo is a demo cluster that chaos started itself: `hachat demo
// --free-ports` as a child process, with its state directory (logs,
// certificates, databases, state file) kept for the post-mortem.
type Demo struct {
	// StatePath is its state file.
	StatePath string
	cmd       *exec.Cmd
	done      chan struct{}
}

// StartDemo starts `bin demo --free-ports --dir dir` plus extra flags
// and waits (within ctx) until its state file lists every part running.
func StartDemo(ctx context.Context, bin, dir string, extra ...string) (*Demo, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("demo dir: %w", err)
	}
	state := filepath.Join(dir, "demo.json")
	_ = os.Remove(state)
	out, err := os.Create(filepath.Join(dir, "demo.out"))
	if err != nil {
		return nil, fmt.Errorf("demo output: %w", err)
	}
	defer out.Close()
	args := append([]string{"demo", "--free-ports", "--dir", dir, "--state", state}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches chaos, which stops the demo in order
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start demo: %w", err)
	}
	d := &Demo{StatePath: state, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.done) }()
	for {
		// The demo prints its table and "state file: ..." once every part is
		// ready; the state file is written part by part before that.
		printed, _ := os.ReadFile(out.Name())
		st, err := ReadState(state)
		if err == nil && bytes.Contains(printed, []byte("state file:")) && st.Control != "" && allRunning(st) {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("demo exited before it was ready (see %s)", out.Name())
		case <-ctx.Done():
			d.Stop()
			return nil, fmt.Errorf("demo not ready: %w (see %s)", ctx.Err(), out.Name())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func allRunning(st State) bool {
	for _, p := range st.Parts {
		if p.State != "running" {
			return false
		}
	}
	return true
}

// Stop stops the demo as Ctrl-C would (SIGTERM; SIGKILL of its process
// group after 30 s) and waits for it.
func (d *Demo) Stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
		return errors.New("demo did not stop within 30s: killed")
	}
}
