package chatclient

import (
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// waitPath polls c.PathUp until want reports its error acceptable.
func waitPath(t *testing.T, c *Client, what string, want func(error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.PathUp()
		if want(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: PathUp = %v after 10s", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveCore serves a fake core on addr (":0": any port) and returns the
// server and its address.
func serveCore(t *testing.T, addr string) (*grpc.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	chatpb.RegisterChatServer(srv, &fakeCore{})
	go srv.Serve(ln) // ends with srv.Stop
	return srv, ln.Addr().String()
}

// TestPathUpFollowsTheTarget: the path is up while the target (a sidecar)
// serves, down once it is gone (its port refuses: kill -9), even with no
// call in flight, and up again when it is back on the same port.
func TestPathUpFollowsTheTarget(t *testing.T) {
	srv, addr := serveCore(t, "127.0.0.1:0")
	c, err := New(Config{Targets: []string{addr}, Policy: DefaultPolicy()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.PathUp(); err != nil {
		t.Fatalf("PathUp before any dial = %v, want up (unknown counts as up)", err)
	}
	waitPath(t, c, "target serving", func(err error) bool { return err == nil && c.conns[0].GetState().String() == "READY" })
	srv.Stop()
	waitPath(t, c, "target gone", func(err error) bool { return errors.Is(err, ErrNoPath) })
	srv, _ = serveCore(t, addr)
	defer srv.Stop()
	waitPath(t, c, "target back", func(err error) bool { return err == nil })
}

// TestPathUpSidecarWithoutCore: a target that accepts connections and then
// closes them (a sidecar with no core to offer, during a failover) keeps
// the path up: the hop the process owns is there.
func TestPathUpSidecarWithoutCore(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // ends when ln is closed
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	c, err := New(Config{Targets: []string{ln.Addr().String()}, Policy: DefaultPolicy()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if err := c.PathUp(); err != nil {
			t.Fatalf("PathUp = %v with a target that accepts and closes, want up", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if seen, _ := c.dials[0].last(); !seen {
		t.Fatal("no dial recorded: PathUp did not make the idle connection connect")
	}
}

// TestPathUpAnyTarget: with two targets (no sidecar: both cores), the path
// is up while one of them answers, down when neither does.
func TestPathUpAnyTarget(t *testing.T) {
	srv, addr := serveCore(t, "127.0.0.1:0")
	defer srv.Stop()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	c, err := New(Config{Targets: []string{deadAddr, addr}, Policy: DefaultPolicy()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitPath(t, c, "the second target ready", func(err error) bool { return err == nil && c.conns[1].GetState().String() == "READY" })
	if seen, _ := c.dials[0].last(); !seen {
		waitPath(t, c, "the dead target dialled", func(error) bool { seen, _ := c.dials[0].last(); return seen })
	}
	if err := c.PathUp(); err != nil {
		t.Fatalf("PathUp = %v with one target serving", err)
	}
	srv.Stop()
	waitPath(t, c, "both targets gone", func(err error) bool { return errors.Is(err, ErrNoPath) })
}
