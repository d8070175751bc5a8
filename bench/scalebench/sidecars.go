package scalebench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/bench/chatbench"
)

// formatACK is the line a sidecar process writes for an acknowledged
// response: when (Unix nanoseconds), which sidecar, the type URL, the
// version and the response's size.
func formatACK(at time.Time, i int, typ, version string, size int) string {
	return fmt.Sprintf("%d %d %s %s %d\n", at.UnixNano(), i, typ, version, size)
}

// ackLine is one parsed line of formatACK.
type ackLine struct {
	at      time.Time
	i       int
	typ     string
	version string
	size    int
}

// parseACK parses a line of formatACK (without its newline).
func parseACK(line string) (ackLine, error) {
	f := strings.Fields(line)
	if len(f) != 5 {
		return ackLine{}, fmt.Errorf("ack line %q: want 5 fields", line)
	}
	ns, err1 := strconv.ParseInt(f[0], 10, 64)
	i, err2 := strconv.Atoi(f[1])
	size, err3 := strconv.Atoi(f[4])
	if err1 != nil || err2 != nil || err3 != nil || i < 0 {
		return ackLine{}, fmt.Errorf("ack line %q: bad number", line)
	}
	return ackLine{at: time.Unix(0, ns), i: i, typ: f[2], version: f[3], size: size}, nil
}

// RunSidecars runs n sidecar ADS streams to the control plane at addr,
// each on its own connection, until ctx ends, and writes a formatACK line
// to out for every acknowledged response. It is the sidecar process of
// RunPush with PushOptions.Binary (hachat bench scale-sidecars).
func RunSidecars(ctx context.Context, addr string, n int, out io.Writer) error {
	if n < 1 {
		return fmt.Errorf("sidecars %d: want at least 1", n)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(out)
	conns := make([]*grpc.ClientConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	sidecars := make([]*adsSidecar, n)
	for i := range sidecars {
		var err error
		if conns[i], err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return fmt.Errorf("dial the control plane: %w", err)
		}
		s := newSidecar("bench-sidecar-" + strconv.Itoa(i))
		s.onACK = func(typ, version string, at time.Time, size int) {
			mu.Lock()
			defer mu.Unlock()
			_, _ = w.WriteString(formatACK(at, i, typ, version, size))
		}
		sidecars[i] = s
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i, s := range sidecars {
		wg.Go(func() { s.run(ctx, conns[i]) })
	}
	// The lines go out every few milliseconds: an ACK's time is taken
	// when it is sent, so the flush delay does not skew the figures.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		mu.Lock()
		err := w.Flush()
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("write acks: %w", err)
		}
		for _, s := range sidecars {
			if _, _, _, _, err := s.snapshot(); err != nil {
				return fmt.Errorf("sidecar %s: %w", s.id, err)
			}
		}
	}
}

// sidecarProcess is the sidecar process of a push run.
type sidecarProcess struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan struct{} // closed when its output is read to the end
}

// startSidecarProcess starts binary's sidecar process for n streams to
// addr; its lines are recorded into sidecars until it ends. When it ends
// while ctx lives, every sidecar fails with its error.
func startSidecarProcess(ctx context.Context, binary, addr string, sidecars []*adsSidecar) (*sidecarProcess, error) {
	p := &sidecarProcess{done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, binary, "bench", "scale-sidecars", "--xds", addr, "--sidecars", strconv.Itoa(len(sidecars)))
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("sidecar process: %w", err)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the sidecar process: %w", err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		var bad error
		for sc.Scan() {
			l, err := parseACK(sc.Text())
			if err != nil || l.i >= len(sidecars) {
				bad = fmt.Errorf("sidecar process: %w", err)
				break
			}
			sidecars[l.i].record(l.typ, l.version, l.at, l.size)
		}
		werr := p.cmd.Wait()
		if ctx.Err() != nil {
			return
		}
		why := errors.Join(bad, werr, sc.Err())
		if why == nil {
			why = errors.New("it exited")
		}
		err := fmt.Errorf("sidecar process ended: %w (stderr: %s)", why, strings.TrimSpace(p.stderr.String()))
		for _, s := range sidecars {
			s.fail(err)
		}
	}()
	return p, nil
}

// cpu returns the sidecar process's CPU time so far (0 when unknown).
func (p *sidecarProcess) cpu() time.Duration {
	d, err := chatbench.ProcessesCPU(p.cmd.Process.Pid)()
	if err != nil {
		return 0
	}
	return d
}
