// Package auth proves who a user of the agent API is: built-in accounts
// (an accounts file of argon2id password hashes), OpenID Connect bearer
// tokens from the contact centre's identity provider, the sessions that a
// successful login opens, and the throttle that slows repeated failed logins.
//
// The role of a user always comes from the account or from the identity
// provider's token, never from the request. The package knows nothing of
// HTTP routes; package interaction wires it into the agent API.
package auth

import (
	"errors"
	"fmt"
	"time"
)

// Roles a user may hold.
const (
	// RoleAgent takes offered chats and reaches only the chats it holds.
	RoleAgent = "agent"
	// RoleSupervisor lists, monitors and coaches every live chat.
	RoleSupervisor = "supervisor"
)

// ValidRole reports whether r is RoleAgent or RoleSupervisor.
func ValidRole(r string) bool { return r == RoleAgent || r == RoleSupervisor }

// Identity is a proven user: what a login yields and a session carries.
type Identity struct {
	// ID is the agent id (the account's id, or the identity provider's id claim).
	ID string
	// Nickname is the name customers see (default the id).
	Nickname string
	// Role is RoleAgent or RoleSupervisor.
	Role string
	// Source names where the identity was proven: "accounts" or "oidc".
	Source string
}

// Sentinel errors. Callers branch on them with errors.Is; the messages never
// say whether an account exists.
var (
	// ErrBadCredentials reports an unknown account, a wrong or missing
	// password, or a token that does not verify.
	ErrBadCredentials = errors.New("invalid credentials")
	// ErrNoRole reports a verified identity-provider token without a usable
	// role claim.
	ErrNoRole = errors.New("no usable role for this identity")
	// ErrNoSource reports a login kind that is not configured (no accounts
	// file, no identity provider).
	ErrNoSource = errors.New("login method not configured")
	// ErrSessionUnknown reports a session token that is unknown, expired or
	// revoked.
	ErrSessionUnknown = errors.New("unknown, expired or revoked session")
	// ErrBadAccountsFile reports an accounts file that cannot be used.
	ErrBadAccountsFile = errors.New("bad accounts file")
	// ErrAccountExists reports an add of an id that already has an account.
	ErrAccountExists = errors.New("account already exists")
	// ErrNoAccount reports a remove of an id without an account.
	ErrNoAccount = errors.New("no such account")
)

// ThrottledError reports a login refused without checking the credential,
// because too many logins failed recently for the account or from the
// client address. It wraps ErrThrottled.
type ThrottledError struct {
	// RetryAfter is how long the caller should wait.
	RetryAfter time.Duration
	// Key says what is throttled: "account" or "address".
	Key string
}

// ErrThrottled is the class of every *ThrottledError.
var ErrThrottled = errors.New("too many failed logins")

// Error says what is throttled and for how long.
func (e *ThrottledError) Error() string {
	return fmt.Sprintf("%v for this %s; retry in %s", ErrThrottled, e.Key, e.RetryAfter.Round(time.Second))
}

// Unwrap returns ErrThrottled.
func (e *ThrottledError) Unwrap() error { return ErrThrottled }
