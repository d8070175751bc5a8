package interaction

import (
	"errors"
	"fmt"
)

// Error classes of the agent API. Every error the Router and the Server return
// wraps exactly one of them; the HTTP layer maps them to status codes.
var (
	// ErrBadRequest marks malformed or invalid input (HTTP 400).
	ErrBadRequest = errors.New("bad request")
	// ErrUnauthorized marks a missing, unknown or revoked token (HTTP 401).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden marks a call on a chat the caller does not hold, or a
	// supervisor call by an agent (HTTP 403).
	ErrForbidden = errors.New("forbidden")
	// ErrNotFound marks an unknown chat, offer or agent (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrConflict marks a call that the current state does not allow (HTTP 409).
	ErrConflict = errors.New("conflict")
	// ErrCoreUnavailable marks a chat core that cannot be reached right now
	// (HTTP 503); the caller may retry, with the same clientMessageId for sends.
	ErrCoreUnavailable = errors.New("chat core unavailable")
	// ErrTooMany marks a send the chat core refused as too frequent (HTTP 429).
	ErrTooMany = errors.New("too many requests")
	// ErrCore marks any other failure of the chat core (HTTP 502).
	ErrCore = errors.New("chat core error")
)

// Specific routing errors, each wrapping its class.
var (
	// ErrNoOffer reports accept or reject of a chat not offered to this agent.
	ErrNoOffer = fmt.Errorf("%w: no such offer", ErrNotFound)
	// ErrUnknownChat reports a chat id the server does not know.
	ErrUnknownChat = fmt.Errorf("%w: unknown chat", ErrNotFound)
	// ErrUnknownAgent reports an agent id that is not logged in.
	ErrUnknownAgent = fmt.Errorf("%w: agent not logged in", ErrNotFound)
	// ErrNotYourChat reports a call on a chat held by someone else.
	ErrNotYourChat = fmt.Errorf("%w: not your chat", ErrForbidden)
	// ErrSupervisorOnly reports a supervisor call made by an agent.
	ErrSupervisorOnly = fmt.Errorf("%w: supervisors only", ErrForbidden)
	// ErrAtCapacity reports an agent that already holds max-chats-per-agent chats.
	ErrAtCapacity = fmt.Errorf("%w: agent at capacity", ErrConflict)
	// ErrBusy reports a chat with a join, transfer, leave or close in flight.
	ErrBusy = fmt.Errorf("%w: chat busy with another operation", ErrConflict)
	// ErrHoldsChats reports a logout by an agent who still holds chats.
	ErrHoldsChats = fmt.Errorf("%w: agent still holds chats; close or transfer them first", ErrConflict)
	// ErrRoleMismatch reports a login with a different role than the session
	// already logged in under that agent id.
	ErrRoleMismatch = fmt.Errorf("%w: agent already logged in with another role", ErrConflict)
	// ErrNotRoutable reports ready/not ready for a supervisor, who takes no offers.
	ErrNotRoutable = fmt.Errorf("%w: supervisors take no offers", ErrConflict)
	// ErrSilentMonitor reports a send by a supervisor who monitors silently.
	ErrSilentMonitor = fmt.Errorf("%w: monitoring is silent; coach to send", ErrConflict)
	// ErrChatEnded reports a call on a chat whose session has ended.
	ErrChatEnded = fmt.Errorf("%w: chat ended", ErrConflict)
)

// Errors of the state store and of leadership among instances.
var (
	// ErrBadState reports a saved snapshot that contradicts itself; a new
	// leader refuses it rather than route from it.
	ErrBadState = errors.New("interaction: inconsistent routing state")
	// ErrNotLeader reports a save by an instance that no longer leads: its
	// routing decisions must not stand. It wraps ErrCoreUnavailable, so the
	// agent API answers 503 and the desktop retries (through the new leader).
	ErrNotLeader = fmt.Errorf("%w: this interaction instance no longer leads", ErrCoreUnavailable)
)
