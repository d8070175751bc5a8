package webapi

import (
	"context"
	"net"
)

// netListenConfig opens loopback listeners on a free port for tests.
type netListenConfig struct{}

func (netListenConfig) listen(ctx context.Context) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", "127.0.0.1:0")
}
