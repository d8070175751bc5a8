package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofAddr returns the address --pprof listens on: addr as given, except
// that an address without a host (":6060") is bound to the loopback
// interface, so that profiles are reachable from elsewhere only when a host
// is named explicitly (0.0.0.0:6060, [::]:6060, 10.0.0.5:6060).
func pprofAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: bad pprof address %q: want host:port: %w", ErrBadConfig, addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// pprofServer serves net/http/pprof on its own listener.
type pprofServer struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// startPProf listens on addr (see pprofAddr) and serves the pprof
// handlers there until stop. It logs the bound address (port 0 picks one).
func startPProf(addr string, log *slog.Logger) (*pprofServer, error) {
	bind, err := pprofAddr(addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("pprof listen %s: %w", bind, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	p := &pprofServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: ln.Addr(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof server stopped", "addr", p.addr.String(), "err", err)
		}
	}()
	log.Info("pprof serving", "addr", p.addr.String(), "url", "http://"+p.addr.String()+"/debug/pprof/")
	return p, nil
}

// stop closes the listener and every connection (a profile being taken is
// cut short) and waits for the server goroutine.
func (p *pprofServer) stop() error {
	err := p.srv.Close()
	<-p.done
	if err != nil {
		return fmt.Errorf("stop pprof: %w", err)
	}
	return nil
}

// PProfAddr returns the address the pprof server listens on (its port
// resolved when --pprof asked for port 0), or "" when --pprof is off.
func (t *Telemetry) PProfAddr() string {
	if t.pprof == nil {
		return ""
	}
	return t.pprof.addr.String()
}

// stopPProf stops the pprof server, if any.
func (t *Telemetry) stopPProf(ctx context.Context) error {
	if t.pprof == nil {
		return nil
	}
	return t.pprof.stop()
}
