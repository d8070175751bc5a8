package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The control socket: `hachat demo restart NAME` asks the running demo's
// supervisor, which owns the parts as its child processes, to start a part
// again. Only the supervisor can do it well: it waits on its children (a
// part started by anyone else would be nobody's child, unwatched, and not
// stopped by Ctrl-C), and it records the new PID in the state file.
//
// The socket is a Unix socket beside the state file (mode 0600), and the
// supervisor accepts only connections from its own user (SO_PEERCRED) or
// root: nothing listens on the network.

var (
	// ErrAlreadyRunning means a restart was asked for a part that runs;
	// nothing was done (RestartOptions.Force stops it first).
	ErrAlreadyRunning = errors.New("already running")
	// ErrNoDemo means the state file names no running demo: it is missing,
	// unreadable, or its supervisor is gone (a stale file).
	ErrNoDemo = errors.New("no running demo")
	// ErrStopping means the supervisor is stopping every part.
	ErrStopping = errors.New("the demo is stopping")
)

// ControlPath returns the control socket of the demo whose state file is
// statePath: the state file's path with its extension replaced by ".sock".
func ControlPath(statePath string) string {
	return strings.TrimSuffix(statePath, filepath.Ext(statePath)) + ".sock"
}

// RestartOptions tunes Supervisor.RestartPart.
type RestartOptions struct {
	// Force restarts a part that is running: it is stopped as Ctrl-C stops
	// it (SIGTERM, so a primary core hands over to an in-sync backup first;
	// SIGKILL after the grace period), then started again. Without Force, a
	// running part is left alone and RestartPart returns ErrAlreadyRunning.
	Force bool
}

// RestartResult is what a restart did.
type RestartResult struct {
	// Part is the part's new entry in the state file.
	Part PartState `json:"part"`
	// OldPID is the PID of the run it replaced, and OldState how that run
	// had ended ("exited", "stopped"; "running" when Force stopped it).
	OldPID   int    `json:"oldPid"`
	OldState string `json:"oldState"`
	// Took is the time from the start of the process to its readiness.
	Took time.Duration `json:"took_ns"`
}

// RestartPart starts the part called name again, with the flags it was
// first started with, waits until it is ready (its /healthz answers) and
// records its new PID in the state file. A core started again this way
// joins as backup when the other core has become primary. A part that is
// running is left alone (ErrAlreadyRunning) unless opts.Force.
// Restarts are serialised.
func (s *Supervisor) RestartPart(ctx context.Context, name string, opts RestartOptions) (RestartResult, error) {
	s.restartMu.Lock()
	defer s.restartMu.Unlock()
	plan := s.Plan()
	part, ok := plan.Part(name)
	if !ok {
		return RestartResult{}, fmt.Errorf("%w %q (parts: %s)", ErrUnknownPart, name, strings.Join(plan.Names(), ", "))
	}
	s.mu.Lock()
	stopping := s.stopping
	p := s.procs[name]
	var res RestartResult
	if p != nil {
		res.OldPID, res.OldState = p.pid, p.state
	}
	s.mu.Unlock()
	if stopping {
		return res, fmt.Errorf("restart %s: %w", name, ErrStopping)
	}
	if p != nil && s.Running(name) {
		if !opts.Force {
			return res, fmt.Errorf("%s is %w as pid %d: nothing done (--force stops it, SIGTERM, and starts it again)",
				name, ErrAlreadyRunning, p.pid)
		}
		s.progressf("restart %s: stopping the running pid %d first (--force)\n", name, p.pid)
		if err := s.StopPart(ctx, name); err != nil {
			return res, err
		}
	} else {
		s.progressf("restart %s (asked by hachat demo restart)\n", name)
	}
	begin := time.Now()
	if err := s.startPart(ctx, part); err != nil {
		return res, err
	}
	res.Took = time.Since(begin)
	for _, st := range s.Status() {
		if st.Name == name {
			res.Part = st
		}
	}
	s.opts.Logger.Info("part restarted", "child", name, "pid", res.Part.PID, "old_pid", res.OldPID, "took", res.Took.String())
	return res, nil
}

// serveControl listens on opts.Control and answers restart requests until
// the supervisor stops. It returns once the socket listens.
func (s *Supervisor) serveControl() error {
	path, err := filepath.Abs(s.opts.Control)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if len(path) >= 108 { // sun_path
		return fmt.Errorf("control socket path %s is too long for a Unix socket (%d bytes, at most 107): use a shorter --state", path, len(path))
	}
	// A socket left by a demo that was killed: CheckFree has already told
	// that no live demo uses this state file.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	s.controlPath = path
	mux := http.NewServeMux()
	mux.HandleFunc("POST /restart", s.handleRestart)
	mux.HandleFunc("POST /add-pair", s.handleAddPair)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.root },
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(peerListener{ln})
	}()
	s.closeControl = func() {
		srv.Close()
		<-done
		os.Remove(path)
	}
	return nil
}

// handleRestart serves POST /restart?name=NAME[&force=1].
func (s *Supervisor) handleRestart(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	res, err := s.RestartPart(r.Context(), name, RestartOptions{Force: r.URL.Query().Get("force") == "1"})
	w.Header().Set("Content-Type", "application/json")
	body := struct {
		RestartResult
		Error string `json:"error,omitempty"`
		Code  string `json:"code,omitempty"`
	}{RestartResult: res}
	status := http.StatusOK
	if err != nil {
		body.Error = err.Error()
		switch {
		case errors.Is(err, ErrUnknownPart):
			status, body.Code = http.StatusNotFound, "unknown"
		case errors.Is(err, ErrAlreadyRunning):
			status, body.Code = http.StatusConflict, "running"
		case errors.Is(err, ErrStopping):
			status, body.Code = http.StatusServiceUnavailable, "stopping"
		default:
			status, body.Code = http.StatusInternalServerError, "failed"
		}
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// peerListener accepts only connections from this process's user or root.
type peerListener struct{ net.Listener }

func (l peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if peerAllowed(c) {
			return c, nil
		}
		c.Close()
	}
}

// peerAllowed reports whether the peer of a Unix connection runs as our
// user or as root.
func peerAllowed(c net.Conn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return false
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Getuid()
}

// RequestRestart asks the demo whose state file is statePath to restart the
// part called name, and waits until it is ready (or ctx ends). It checks
// what it can before asking: a missing or stale state file is ErrNoDemo, a
// name the state file does not list is ErrUnknownPart; the supervisor's
// refusals come back as ErrAlreadyRunning, ErrUnknownPart or ErrStopping.
func RequestRestart(ctx context.Context, statePath, name string, opts RestartOptions) (RestartResult, error) {
	st, err := ReadState(statePath)
	if errors.Is(err, os.ErrNotExist) {
		return RestartResult{}, fmt.Errorf("%w: no state file %s (start one with `hachat demo`, or give its --state)", ErrNoDemo, statePath)
	}
	if err != nil {
		return RestartResult{}, fmt.Errorf("%w: %w", ErrNoDemo, err)
	}
	if st.Supervisor <= 0 || !alive(st.Supervisor) {
		return RestartResult{}, fmt.Errorf("%w: state file %s is stale: its demo (supervisor pid %d) is not running; start a new one with `hachat demo`",
			ErrNoDemo, statePath, st.Supervisor)
	}
	if _, ok := st.Part(name); !ok {
		names := make([]string, 0, len(st.Parts))
		for _, p := range st.Parts {
			names = append(names, p.Name)
		}
		return RestartResult{}, fmt.Errorf("%w %q in %s (parts: %s)", ErrUnknownPart, name, statePath, strings.Join(names, ", "))
	}
	if st.Control == "" {
		return RestartResult{}, fmt.Errorf("%w: the demo of %s (supervisor pid %d) takes no restart requests (no control socket in its state file: started by an older hachat)",
			ErrNoDemo, statePath, st.Supervisor)
	}
	q := "name=" + url.QueryEscape(name)
	if opts.Force {
		q += "&force=1"
	}
	var body struct {
		RestartResult
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	code, err := postControl(ctx, st, "/restart?"+q, &body)
	if err != nil {
		return RestartResult{}, err
	}
	if body.Error == "" && code == http.StatusOK {
		return body.RestartResult, nil
	}
	var sentinel error
	switch body.Code {
	case "unknown":
		sentinel = ErrUnknownPart
	case "running":
		sentinel = ErrAlreadyRunning
	case "stopping":
		sentinel = ErrStopping
	}
	if sentinel != nil {
		return body.RestartResult, &remoteError{msg: body.Error, is: sentinel}
	}
	return body.RestartResult, errors.New(body.Error)
}

// postControl posts to path on the control socket of the demo st describes
// and decodes its JSON answer into out; it returns the HTTP status.
func postControl(ctx context.Context, st State, path string, out any) (int, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", st.Control)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://demo"+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("ask the demo (supervisor pid %d) at %s: %w", st.Supervisor, st.Control, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return resp.StatusCode, fmt.Errorf("the demo's answer (%s): %w", resp.Status, err)
	}
	return resp.StatusCode, nil
}

// remoteError carries the supervisor's message and the sentinel it meant.
type remoteError struct {
	msg string
	is  error
}

func (e *remoteError) Error() string        { return e.msg }
func (e *remoteError) Is(target error) bool { return target == e.is }
