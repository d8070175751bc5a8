package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/pause"
)

// Applied is one fault as it happened.
type Applied struct {
	Fault
	// Start is when the fault began (the signal, the rules), End when the
	// part was whole again (restarted and ready, resumed, healed).
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// PIDs are the processes it hit.
	PIDs []int `json:"pids,omitempty"`
	// Ports are the ports a partition cut.
	Ports []int `json:"ports,omitempty"`
	// Err is why the fault or its repair failed ("" when it did not).
	Err string `json:"error,omitempty"`
}

// nemesis applies faults to the parts of a running demo and repairs them.
type nemesis struct {
	statePath string
	fw        *Firewall // nil without partitions

	mu      sync.Mutex
	stopped map[int]bool    // pids under SIGSTOP
	down    map[string]bool // parts killed and not yet restarted
	cut     bool            // partition rules are in place
}

func newNemesis(statePath string, fw *Firewall) *nemesis {
	return &nemesis{statePath: statePath, fw: fw, stopped: map[int]bool{}, down: map[string]bool{}}
}

// restart asks the demo's supervisor to start name again and waits until
// it is ready. A part the supervisor still sees running (its exit not yet
// reaped) is asked again.
func (n *nemesis) restart(ctx context.Context, name string, force bool) error {
	for {
		_, err := demo.RequestRestart(ctx, n.statePath, name, demo.RestartOptions{Force: force})
		if err == nil || !errors.Is(err, demo.ErrAlreadyRunning) || force {
			if err == nil {
				n.mu.Lock()
				delete(n.down, name)
				n.mu.Unlock()
			}
			return err
		}
		if !pause.For(ctx, 100*time.Millisecond) {
			return fmt.Errorf("restart %s: %w", name, ctx.Err())
		}
	}
}

// apply runs fault f to its end: the part is whole again when it returns
// (unless ctx ended first: then repair does it).
func (n *nemesis) apply(ctx context.Context, f Fault) Applied {
	a := Applied{Fault: f, Start: time.Now()}
	st, err := ReadState(n.statePath)
	if err != nil {
		a.Err, a.End = err.Error(), time.Now()
		return a
	}
	var parts []Part
	for _, name := range f.Targets {
		p, ok := st.Part(name)
		if !ok {
			a.Err, a.End = fmt.Sprintf("no part %q in the state file", name), time.Now()
			return a
		}
		parts = append(parts, p)
		a.PIDs = append(a.PIDs, p.PID)
	}
	a.Start = time.Now()
	var errs []error
	switch f.Kind {
	case Kill, UCS:
		for _, p := range parts {
			n.mu.Lock()
			n.down[p.Name] = true
			n.mu.Unlock()
			if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
				errs = append(errs, fmt.Errorf("kill -9 %s (pid %d): %w", p.Name, p.PID, err))
			}
		}
		pause.For(ctx, f.Hold)
		for _, p := range parts {
			if err := n.restart(ctx, p.Name, false); err != nil {
				errs = append(errs, fmt.Errorf("restart %s: %w", p.Name, err))
			}
		}
	case Stop:
		p := parts[0]
		n.mu.Lock()
		n.stopped[p.PID] = true
		n.mu.Unlock()
		if err := syscall.Kill(p.PID, syscall.SIGSTOP); err != nil {
			errs = append(errs, fmt.Errorf("SIGSTOP %s: %w", p.Name, err))
		}
		pause.For(ctx, f.Hold)
		if err := syscall.Kill(p.PID, syscall.SIGCONT); err != nil {
			errs = append(errs, fmt.Errorf("SIGCONT %s: %w", p.Name, err))
		}
		n.mu.Lock()
		delete(n.stopped, p.PID)
		n.mu.Unlock()
	case Partition:
		p := parts[0]
		ports := slices.Clone(p.Ports)
		if own, err := ProcessPorts(p.PID); err == nil {
			ports = append(ports, own...)
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		a.Ports = ports
		if n.fw == nil {
			errs = append(errs, errors.New("partition without a firewall"))
			break
		}
		n.mu.Lock()
		n.cut = true
		n.mu.Unlock()
		if err := n.fw.Cut(ctx, ports); err != nil {
			errs = append(errs, err)
		}
		pause.For(ctx, f.Hold)
		if err := n.fw.Heal(context.WithoutCancel(ctx)); err != nil {
			errs = append(errs, err)
		} else {
			n.mu.Lock()
			n.cut = false
			n.mu.Unlock()
		}
	case Restart:
		if err := n.restart(ctx, parts[0].Name, true); err != nil {
			errs = append(errs, err)
		}
	}
	a.End = time.Now()
	if err := errors.Join(errs...); err != nil {
		a.Err = err.Error()
	}
	return a
}

// repair undoes whatever a fault left behind (on Ctrl-C, or a fault cut
// short): SIGCONT to every stopped process, the partition rules removed,
// every part the state file shows not running started again.
func (n *nemesis) repair(ctx context.Context) error {
	var errs []error
	n.mu.Lock()
	for pid := range n.stopped {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		delete(n.stopped, pid)
	}
	cut := n.cut
	n.cut = false
	n.mu.Unlock()
	if cut && n.fw != nil {
		if err := n.fw.Heal(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	st, err := ReadState(n.statePath)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, p := range st.Parts {
		n.mu.Lock()
		down := n.down[p.Name]
		n.mu.Unlock()
		if p.State == "running" && !down && syscall.Kill(p.PID, 0) == nil {
			continue
		}
		if err := n.restart(ctx, p.Name, false); err != nil && !errors.Is(err, demo.ErrAlreadyRunning) {
			errs = append(errs, fmt.Errorf("restart %s: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}
