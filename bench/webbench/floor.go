package webbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// floorService is the chat service the floor phase starts its chats in.
const floorService = "floor"

// runFloor is the floor phase: it starts the floor server, sets up the
// same chats and agents on it as on the cluster, measures the same message
// phase, and stops the server.
func runFloor(ctx context.Context, o Options) (*Floor, error) {
	argv := o.FloorCommand
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable: %w", err)
		}
		argv = []string{exe, "bench", "web-floor-server"}
		if o.PProf {
			argv = append(argv, "--pprof=127.0.0.1:0")
		}
	}
	fp, err := startFloor(ctx, argv, o.Progress)
	if err != nil {
		return nil, err
	}
	defer fp.stop()
	fmt.Fprintf(o.Progress, "floor server at %s (pid %d)\n", fp.url, fp.pid)
	t := target{webapi: fp.url, inter: fp.url, service: floorService}
	for i := range o.Agents {
		t.agents = append(t.agents, credential{fmt.Sprintf("agent%d", i), "floor"})
	}
	b, err := newBench(o, t)
	if err != nil {
		return nil, err
	}
	b.label = "floor: "
	defer b.close()
	rssBefore, err := processRSS(fp.pid)
	if err != nil {
		return nil, err
	}
	setup, err := b.setUp(ctx)
	if err != nil {
		return nil, err
	}
	rssChats, err := processRSS(fp.pid)
	if err != nil {
		return nil, err
	}
	m, err := b.messages(ctx, map[string]int{"floor": fp.pid}, "")
	if err != nil {
		return nil, err
	}
	return &Floor{
		Phase:               m.phase(setup, o.Messages),
		BytesPerChat:        (float64(rssChats) - float64(rssBefore)) / float64(o.Chats),
		ServerCPUPerMessage: m.perMessage(m.cpu["floor"]),
		ClientCPUPerMessage: m.perMessage(m.self),
	}, nil
}

// floorProcess is the floor server running as a child process.
type floorProcess struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc // stops it: SIGTERM, SIGKILL after a grace
	url    string             // its base URL
	pid    int
}

// startFloor starts the floor server with argv and --listen=127.0.0.1:0,
// and waits for the base URL it prints first. Its standard error goes to
// progress.
func startFloor(ctx context.Context, argv []string, progress io.Writer) (*floorProcess, error) {
	pctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(pctx, argv[0], append(argv[1:len(argv):len(argv)], "--listen=127.0.0.1:0")...)
	// Its own process group, so that a Ctrl-C reaches only the bench, which
	// stops it; Pdeathsig: it does not outlive a bench that was killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	first := &firstLine{ready: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = first, progress
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start floor server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // owned by the floorProcess: stop cancels and waits
	fp := &floorProcess{cmd: cmd, pid: cmd.Process.Pid, cancel: func() { cancel(); <-exited }}
	select {
	case <-first.ready:
		fp.url = first.line()
		if !strings.HasPrefix(fp.url, "http://") {
			fp.stop()
			return nil, fmt.Errorf("floor server: first line %q is not its URL", fp.url)
		}
		return fp, nil
	case err := <-exited:
		cancel()
		return nil, fmt.Errorf("floor server exited before it listened: %v", err)
	case <-time.After(10 * time.Second):
		fp.stop()
		return nil, fmt.Errorf("floor server: no URL within 10s")
	case <-ctx.Done():
		fp.stop()
		return nil, ctx.Err()
	}
}

// stop ends the floor server and waits for it.
func (fp *floorProcess) stop() { fp.cancel() }

// firstLine is a process's standard output that keeps its first line and
// drops the rest.
type firstLine struct {
	mu    sync.Mutex
	buf   []byte
	done  bool
	ready chan struct{} // closed once the first line is in
}

func (f *firstLine) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return len(p), nil
	}
	f.buf = append(f.buf, p...)
	if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
		f.buf, f.done = f.buf[:i], true
		close(f.ready)
	}
	return len(p), nil
}

// line is the first line, once ready is closed.
func (f *firstLine) line() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.TrimSpace(string(f.buf))
}
