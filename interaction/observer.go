package interaction

import (
	"context"

	"github.com/hachat/hachat/chatclient"
)

// withObserver asks a chatclient.Client to report the reconnects it rides
// out inside a stream; other ChatClients ignore it and the Server's own
// resume loops report instead.
func withObserver(ctx context.Context, obs func(up bool, err error)) context.Context {
	return chatclient.WithStreamObserver(ctx, obs)
}
