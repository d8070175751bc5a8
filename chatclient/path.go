package chatclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// ErrNoPath is returned by Client.PathUp when no target can be reached: every
// connection is down and gRPC's last dial to its target failed (a dead
// sidecar refuses at once).
var ErrNoPath = errors.New("chatclient: no path to the chat cores")

// dialRecord remembers how gRPC's last dial to one target went. The Client
// dials through it (grpc.WithContextDialer), so the record costs no
// connection of its own: it watches the connections gRPC makes anyway.
type dialRecord struct {
	mu   sync.Mutex
	err  error // the last dial's error; nil after a dial that connected
	seen bool  // a dial has ended since New
}

// dial is the Client's dialer: a plain TCP dial whose outcome is recorded.
// A dial that gRPC itself gave up (its context done: the connection is
// closing or superseded) says nothing about the target and is not recorded.
func (r *dialRecord) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil && ctx.Err() != nil {
		return nil, err
	}
	r.mu.Lock()
	r.err, r.seen = err, true
	r.mu.Unlock()
	return c, err
}

// last returns whether a dial has ended since New, and its error.
func (r *dialRecord) last() (seen bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen, r.err
}

// PathUp reports whether the Client has a path to the chat cores: some
// target's connection is READY, or gRPC's last dial to it connected (a
// sidecar that is up but has no core to offer yet, during a failover, still
// counts: the hop this process owns is there). It returns ErrNoPath, with
// each target's last dial error, when every target's connection is down
// and its last dial failed. A target not dialled yet counts as up.
//
// PathUp dials nothing itself: it watches the connections gRPC keeps, and
// asks an idle one to connect (gRPC leaves a connection idle after its
// transport closed until the next call), so that a process with no traffic
// still notices its sidecar's death and its return within gRPC's reconnect
// backoff (300 ms at most). It is cheap enough to call every few hundred
// milliseconds. webapi and interaction withdraw from the edge's rotation
// while it fails (membership.Presence).
func (c *Client) PathUp() error {
	var errs []error
	for i, conn := range c.conns {
		st := conn.GetState()
		if st == connectivity.Ready {
			return nil
		}
		if st == connectivity.Idle {
			conn.Connect()
		}
		seen, err := c.dials[i].last()
		if !seen || err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s (%s): %w", c.cfg.Targets[i], st, err))
	}
	return fmt.Errorf("%w: %w", ErrNoPath, errors.Join(errs...))
}

// dialOption returns the dial option that records target i's dials.
func (c *Client) dialOption(i int) grpc.DialOption {
	return grpc.WithContextDialer(c.dials[i].dial)
}
