package interaction

import (
	"context"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/chatcore/chatpb"
)

// withObserver asks a chatclient.Client to report the reconnects it rides
// out inside a stream; other ChatClients ignore it and the Server's own
// resume loops report instead.
func withObserver(ctx context.Context, obs func(up bool, err error)) context.Context {
	return chatclient.WithStreamObserver(ctx, obs)
}

// withEventTaker asks a chatclient.Client to hand a Subscribe's events to
// take on its stream reader when it can (chatclient.WithEventTaker); other
// ChatClients ignore it and every event comes through Recv.
func withEventTaker(ctx context.Context, take func(*chatpb.Event) bool) context.Context {
	return chatclient.WithEventTaker(ctx, take)
}
