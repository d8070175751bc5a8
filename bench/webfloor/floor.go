// Package webfloor is the floor of `hachat bench web`: a bare net/http
// server with the HTTP shape of the customer path and nothing behind it.
//
// It answers the routes the bench's load generator calls, with the same
// forms, answers and push channels as webapi (the customer API) and
// interaction (the agent API): a chat start and a send at
// /genesys/2/chat/{service}[/{chatId}/send], the customer's push channel at
// .../{chatId}/events, agent logins, readiness, offers and their acceptance
// under /agent/v1, and one push channel per agent. A send writes the
// message's event, of the size and framing webapi and interaction write it,
// to the customer's push channel and to the channel of the agent who
// accepted the chat, and answers as webapi answers a send. Each push
// channel has one writer goroutine (its request's) that writes the events
// ready together in one write and flush, with the sse package's Writer that
// webapi and interaction use.
//
// There is no chat core, no replication, no transcript and no real
// authentication: a chat's secure key and an agent's token are checked
// only so that the routes keep their shape. What `hachat bench web`
// measures against it is the cost of HTTP and SSE alone on the machine: a
// floor under the customer path's messages/s.
//
// A chat keeps no transcript: a push channel opened again gets only the
// events sent after it opened.
package webfloor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Alias is the "alias" of every answer (webapi's names the core that served).
const Alias = "floor"

// Server is the floor's state: its chats and agents. Its zero value is not
// usable; make one with New.
type Server struct {
	mu     sync.RWMutex
	chats  map[string]*chat  // by chat id
	agents map[string]*agent // by agent id
	tokens map[string]*agent // by bearer token
	ready  []*agent          // offered new chats in turn
	turn   int               // the next ready agent offered a chat

	handler http.Handler
}

// New makes a floor server with no chats and no agents.
func New() *Server {
	s := &Server{chats: map[string]*chat{}, agents: map[string]*agent{}, tokens: map[string]*agent{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /genesys/2/chat/{service}", s.handleStart)
	mux.HandleFunc("POST /genesys/2/chat/{service}/{chatId}/send", s.handleSend)
	mux.HandleFunc("GET /genesys/2/chat/{service}/{chatId}/events", s.handleCustomerEvents)
	mux.HandleFunc("POST /agent/v1/login", s.handleLogin)
	mux.HandleFunc("POST /agent/v1/ready", s.authed(s.handleReady))
	mux.HandleFunc("GET /agent/v1/events", s.authed(s.handleAgentEvents))
	mux.HandleFunc("POST /agent/v1/offers/{chatId}/accept", s.authed(s.handleAccept))
	s.handler = mux
	return s
}

// Handler returns the server's routes.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves the floor on ln until ctx ends; then it closes every
// connection (the push channels end with ctx) and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("floor: serve: %w", err)
	}
	return nil
}

// newID returns 128 random bits as 32 hex digits, as the chat core's chat
// ids and secure keys are.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}
