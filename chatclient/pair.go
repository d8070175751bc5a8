package chatclient

import (
	"context"

	"google.golang.org/grpc/metadata"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/pairs"
)

// pairContext names, in pairs.Header, the pair of the chat req is about
// (its Auth's session id, or its session id): the control plane's routes
// send the call to that pair. A request about no chat (StartSession,
// WatchSessions, Status) carries no pair and is placed by the routes. With
// one pair the header matches no route of its own and changes nothing.
func pairContext(ctx context.Context, req any) context.Context {
	id := ""
	switch r := req.(type) {
	case interface{ GetAuth() *chatpb.Auth }:
		id = r.GetAuth().GetSessionId()
	case interface{ GetSessionId() string }:
		id = r.GetSessionId()
	}
	if id == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, pairs.Header, pairs.Of(id))
}
