package demo

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
)

// StateEnv is the environment variable through which every part started by
// a Supervisor knows its demo's state file (an absolute path): a second demo
// that finds one of its ports taken reads it from the part holding the port,
// to name the demo that runs there.
const StateEnv = "HACHAT_DEMO_STATE"

// ErrRunning means another demo (or another program) holds what a new demo
// needs: its state file or one of its ports.
var ErrRunning = errors.New("another demo is running")

// RunningError says what a new demo found in its way. It matches ErrRunning.
type RunningError struct {
	// Supervisor is the PID of the running demo's supervisor (0: unknown,
	// for a port held by a process that no demo started).
	Supervisor int
	// StatePath is the running demo's state file ("" when unknown).
	StatePath string
	// Addr is the address found in use, and Name the field of Addrs it
	// fills ("" when the state file alone told).
	Addr, Name string
	// Holder is the PID and name of the process listening on Addr, when
	// it could be found and is not a demo's part (e.g. "1234 (nginx)").
	Holder string
}

func (e *RunningError) Error() string {
	var b strings.Builder
	if e.Supervisor > 0 {
		fmt.Fprintf(&b, "another hachat demo is running: supervisor pid %d, state file %s", e.Supervisor, e.StatePath)
		if e.Addr != "" {
			fmt.Fprintf(&b, " (it holds %s, this demo's %s)", e.Addr, e.Name)
		}
		fmt.Fprintf(&b, ". Stop it first (Ctrl-C in its terminal, or kill %d), or give this one "+
			"another --dir and --free-ports", e.Supervisor)
		return b.String()
	}
	fmt.Fprintf(&b, "%s (%s) is already in use", e.Addr, e.Name)
	if e.Holder != "" {
		fmt.Fprintf(&b, " by process %s", e.Holder)
	}
	b.WriteString(": stop what holds it, or start the demo with --free-ports")
	return b.String()
}

// Is makes errors.Is(err, ErrRunning) true.
func (e *RunningError) Is(target error) bool { return target == ErrRunning }

// CheckFree returns a *RunningError when a demo should not start with this
// state file and these addresses: the state file names a supervisor that is
// still alive, or one of the addresses is already taken (TCP). It changes
// nothing; call it before writing any file or starting any part.
func CheckFree(statePath string, addrs Addrs) error {
	if st, err := ReadState(statePath); err == nil && st.Supervisor > 0 && st.Supervisor != os.Getpid() && alive(st.Supervisor) {
		abs, _ := filepath.Abs(statePath)
		return &RunningError{Supervisor: st.Supervisor, StatePath: abs}
	}
	for _, a := range addrs.list() {
		l, err := net.Listen("tcp", a.addr)
		if err == nil {
			l.Close()
			continue
		}
		e := &RunningError{Addr: a.addr, Name: a.name}
		if pid := listenerPID(a.addr); pid > 0 {
			if path := envOf(pid, StateEnv); path != "" {
				if st, err := ReadState(path); err == nil && st.Supervisor > 0 && alive(st.Supervisor) {
					e.Supervisor, e.StatePath = st.Supervisor, path
					return e
				}
			}
			e.Holder = strconv.Itoa(pid)
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
				e.Holder += " (" + strings.TrimSpace(string(comm)) + ")"
			}
		}
		return e
	}
	return nil
}

type namedAddr struct{ name, addr string }

// list returns every non-empty address of a, with its field name.
func (a Addrs) list() []namedAddr {
	var out []namedAddr
	v := reflect.ValueOf(a)
	for i := range v.NumField() {
		if s, ok := v.Field(i).Interface().(string); ok && s != "" {
			out = append(out, namedAddr{v.Type().Field(i).Name, s})
		}
	}
	return out
}

// alive reports whether a process with this PID exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// listenerPID returns the PID of a process of ours listening on addr's TCP
// port, from /proc/net/tcp{,6} and /proc/*/fd (0 when not found: another
// user's process, or not Linux).
func listenerPID(addr string) int {
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return 0
	}
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		file, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				inodes["socket:["+fields[9]+"]"] = true
			}
		}
		file.Close()
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[link] {
				return pid
			}
		}
	}
	return 0
}

// envOf returns the value of the environment variable key of process pid
// ("" when unset or unreadable).
func envOf(pid int, key string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}
