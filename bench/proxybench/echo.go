package proxybench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// http2Preface is what every gRPC (HTTP/2) client sends first.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// EchoStatus is what an echo server answers to chatpb Chat/Status, so that
// the sidecar's health checks see a chat core stand-in.
type EchoStatus struct {
	Name  string
	Role  string // "primary" or "backup"
	Epoch uint64
}

// ServeEcho serves raw TCP echo on addr until ctx ends: every byte a client
// sends comes back. A connection that starts with the HTTP/2 preface is
// handed to a gRPC server that answers Chat/Status with st, so one port
// serves both the benchmark's data and the sidecar's health checks. Clients
// of the echo must not start with 'P' followed by the rest of the preface.
//
// With cfg set every connection is TLS (cfg a server configuration, such as
// mtls.Source.ServerConfig); the sniffing happens inside it.
func ServeEcho(ctx context.Context, addr string, st EchoStatus, cfg *tls.Config) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("echo listen %s: %w", addr, err)
	}
	return serveEcho(ctx, ln, st, cfg)
}

func serveEcho(ctx context.Context, ln net.Listener, st EchoStatus, cfg *tls.Config) error {
	if cfg != nil && len(cfg.NextProtos) == 0 {
		// gRPC clients (the sidecar's health checks) require ALPN h2.
		cfg = cfg.Clone()
		cfg.NextProtos = []string{"h2"}
	}
	gl := &chanListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	gs := grpc.NewServer()
	chatpb.RegisterChatServer(gs, &statusServer{st: st})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		gs.Serve(gl)
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		gs.Stop()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("echo accept: %w", err)
		}
		if cfg != nil {
			c = tls.Server(c, cfg)
		}
		go handleEcho(c, gl)
	}
}

func handleEcho(c net.Conn, gl *chanListener) {
	br := bufio.NewReaderSize(c, 32<<10)
	if isPreface(br) {
		if !gl.deliver(&peekedConn{Conn: c, r: br}) {
			c.Close()
		}
		return
	}
	defer c.Close()
	io.Copy(c, br)
}

// isPreface reports whether the connection starts with the HTTP/2 client
// preface. It reads only as far as the bytes keep matching, so an echo
// client whose first bytes merely resemble it is not kept waiting.
func isPreface(br *bufio.Reader) bool {
	for n := 1; n <= len(http2Preface); n++ {
		b, err := br.Peek(n)
		if err != nil || b[n-1] != http2Preface[n-1] {
			return false
		}
		// Compare what already arrived in one go.
		if m := min(br.Buffered(), len(http2Preface)); m > n {
			b, _ = br.Peek(m)
			if !bytes.Equal(b, []byte(http2Preface[:m])) {
				return false
			}
			n = m
			if n == len(http2Preface) {
				return true
			}
		}
	}
	return true
}

// peekedConn is a conn whose first bytes sit in a bufio.Reader.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// chanListener hands sniffed connections to the gRPC server.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

type statusServer struct {
	chatpb.UnimplementedChatServer
	st EchoStatus
}

func (s *statusServer) Status(context.Context, *chatpb.StatusRequest) (*chatpb.StatusResponse, error) {
	return &chatpb.StatusResponse{Name: s.st.Name, Role: s.st.Role, Epoch: s.st.Epoch}, nil
}
