package interaction

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config configures the Interaction Server. The yaml tags are the flag names.
type Config struct {
	// HTTP is the address of the agent API, the agent desktop page, /metrics
	// and /healthz (default 127.0.0.1:8081).
	HTTP string `yaml:"http"`
	// Core is the gRPC address of the chat core, normally the local sidecar's
	// listener (default 127.0.0.1:7311, the demo's interaction sidecar). Only
	// cmd/hachat dials it; the Server itself takes a chatpb.ChatClient.
	Core string `yaml:"core"`
	// ServiceToken is the chat core's service token, which WatchSessions and
	// Join require (default empty: the core must be configured without one).
	ServiceToken string `yaml:"service-token"`
	// OfferTimeout is how long an agent has to accept an offered chat before it
	// goes back to the queue and is offered to the next agent (default 15s).
	OfferTimeout time.Duration `yaml:"offer-timeout"`
	// MaxChatsPerAgent is how many chats one agent holds at most, counting
	// chats being transferred to them and a pending offer (default 3).
	MaxChatsPerAgent int `yaml:"max-chats-per-agent"`
	// MaxQueue caps the chats waiting for an agent (default 500). A new chat
	// that finds the queue full is not queued: it is told "no agent is
	// available" (a Notice with noticeType noAgentAvailable) and closed, so
	// that a flood of chats never waits in front of real customers. 0 lifts
	// the cap.
	MaxQueue int `yaml:"max-queue"`

	// Accounts is the accounts file of built-in logins (password hashes,
	// managed with `hachat accounts`). At least one of Accounts and
	// OIDCIssuer is required: without one nobody can log in.
	Accounts string `yaml:"accounts"`
	// OIDCIssuer is the issuer URL of the identity provider whose ID tokens
	// log agents in (empty: no OIDC).
	OIDCIssuer string `yaml:"oidc-issuer"`
	// OIDCClientID is this server's client id at the identity provider; tokens
	// must carry it as audience.
	OIDCClientID string `yaml:"oidc-client-id"`
	// OIDCClientSecret is the client secret for the desktop's redirect
	// sign-in (empty: a public client using PKCE).
	OIDCClientSecret string `yaml:"oidc-client-secret"`
	// OIDCRedirectURL is the desktop's redirect URL registered at the
	// identity provider, http(s)://<this server>/agent/v1/oidc/callback
	// (empty: no redirect sign-in; bearer tokens still work).
	OIDCRedirectURL string `yaml:"oidc-redirect-url"`
	// OIDCIDClaim is the token claim holding the agent id (default preferred_username).
	OIDCIDClaim string `yaml:"oidc-id-claim"`
	// OIDCRoleClaim is the token claim holding the role, "agent" or
	// "supervisor" (a string or a list; default hachat_role).
	OIDCRoleClaim string `yaml:"oidc-role-claim"`
	// SessionTTL is the longest a login session lives (default 12h).
	SessionTTL time.Duration `yaml:"session-ttl"`
	// SessionIdle ends a session without any request, an open push channel
	// counting as one, for this long (default 30m).
	SessionIdle time.Duration `yaml:"session-idle"`
	// LoginFailuresPerAccount is how many failed logins of one agent id are
	// answered without delay; further attempts wait, doubling from
	// LoginBackoff (default 5).
	LoginFailuresPerAccount int `yaml:"login-failures-per-account"`
	// LoginFailuresPerAddress is the same for one client address across
	// every agent id it tries (default 20).
	LoginFailuresPerAddress int `yaml:"login-failures-per-address"`
	// LoginBackoff is the first wait after the free failures (default 1s);
	// it doubles per further failure up to LoginBackoffMax.
	LoginBackoff time.Duration `yaml:"login-backoff"`
	// LoginBackoffMax caps the wait after failed logins (default 1m); it
	// also bounds how long an attacker can hold a victim's account.
	LoginBackoffMax time.Duration `yaml:"login-backoff-max"`

	// Coordination lists the etcd endpoints (host:port, comma-separated) of
	// the coordination cluster where several interaction instances elect
	// the one that routes and keep the routing state (logins, sessions,
	// offers, the queue, participations), so that any one instance can die
	// (empty: one instance, state in memory). Only cmd/hachat dials it.
	Coordination string `yaml:"coordination"`
	// LeaderLease is how long the leading instance's etcd lease lives
	// without renewal: after kill -9 of the leader, another instance takes
	// over within about this long (default 2s, whole seconds).
	LeaderLease time.Duration `yaml:"leader-lease"`
	// Advertise is the base URL the other instances forward the agent API
	// to (default: http(s)://<the address http listens on>).
	Advertise string `yaml:"advertise"`
}

// DefaultConfig returns the defaults documented on each Config field.
func DefaultConfig() Config {
	return Config{
		HTTP:             "127.0.0.1:8081",
		Core:             "127.0.0.1:7311",
		OfferTimeout:     15 * time.Second,
		MaxChatsPerAgent: 3,
		MaxQueue:         500, // Genesys's sizing of one Chat Server: 500 sessions

		OIDCIDClaim:             "preferred_username",
		OIDCRoleClaim:           "hachat_role",
		SessionTTL:              12 * time.Hour,
		SessionIdle:             30 * time.Minute,
		LoginFailuresPerAccount: 5,
		LoginFailuresPerAddress: 20,
		LoginBackoff:            time.Second,
		LoginBackoffMax:         time.Minute,
		LeaderLease:             2 * time.Second,
	}
}

// RegisterFlags binds the config fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTP, "http", c.HTTP, "address of the agent API and the agent desktop (/agent)")
	fs.StringVar(&c.Core, "core", c.Core, "gRPC address of the chat core (normally the local sidecar)")
	fs.StringVar(&c.ServiceToken, "service-token", c.ServiceToken, "chat core service token for WatchSessions and Join")
	fs.DurationVar(&c.OfferTimeout, "offer-timeout", c.OfferTimeout, "time an agent has to accept an offered chat")
	fs.IntVar(&c.MaxChatsPerAgent, "max-chats-per-agent", c.MaxChatsPerAgent, "most chats one agent holds at once")
	fs.IntVar(&c.MaxQueue, "max-queue", c.MaxQueue, "most chats waiting for an agent; a new chat over it is told no agent is available and closed (0: no cap)")
	fs.StringVar(&c.Accounts, "accounts", c.Accounts, "accounts file of built-in logins (see hachat accounts)")
	fs.StringVar(&c.OIDCIssuer, "oidc-issuer", c.OIDCIssuer, "OpenID Connect issuer URL whose ID tokens log agents in")
	fs.StringVar(&c.OIDCClientID, "oidc-client-id", c.OIDCClientID, "client id at the identity provider (the tokens' audience)")
	fs.StringVar(&c.OIDCClientSecret, "oidc-client-secret", c.OIDCClientSecret, "client secret for the desktop's redirect sign-in (empty: PKCE only)")
	fs.StringVar(&c.OIDCRedirectURL, "oidc-redirect-url", c.OIDCRedirectURL, "redirect URL of the desktop sign-in: <this server>/agent/v1/oidc/callback")
	fs.StringVar(&c.OIDCIDClaim, "oidc-id-claim", c.OIDCIDClaim, "token claim holding the agent id")
	fs.StringVar(&c.OIDCRoleClaim, "oidc-role-claim", c.OIDCRoleClaim, "token claim holding the role (agent or supervisor)")
	fs.DurationVar(&c.SessionTTL, "session-ttl", c.SessionTTL, "longest life of a login session")
	fs.DurationVar(&c.SessionIdle, "session-idle", c.SessionIdle, "a session without requests (or open push channel) ends after this")
	fs.IntVar(&c.LoginFailuresPerAccount, "login-failures-per-account", c.LoginFailuresPerAccount, "failed logins of one agent id before further attempts are slowed")
	fs.IntVar(&c.LoginFailuresPerAddress, "login-failures-per-address", c.LoginFailuresPerAddress, "failed logins from one client address before further attempts are slowed")
	fs.DurationVar(&c.LoginBackoff, "login-backoff", c.LoginBackoff, "first wait imposed once free failed logins are used up (doubles per failure)")
	fs.DurationVar(&c.LoginBackoffMax, "login-backoff-max", c.LoginBackoffMax, "longest wait imposed after failed logins")
	fs.StringVar(&c.Coordination, "coordination", c.Coordination, "etcd endpoints host:port,... where interaction instances elect a leader and keep the routing state (empty: one instance)")
	fs.DurationVar(&c.LeaderLease, "leader-lease", c.LeaderLease, "lease of the leading instance: another takes over about this long after it dies")
	fs.StringVar(&c.Advertise, "advertise", c.Advertise, "base URL other instances forward the agent API to (default: from --http)")
}

// Validate reports the first unusable setting.
func (c Config) Validate() error {
	var errs []error
	if c.OfferTimeout <= 0 {
		errs = append(errs, fmt.Errorf("offer-timeout must be positive, got %s", c.OfferTimeout))
	}
	if c.MaxChatsPerAgent < 1 {
		errs = append(errs, fmt.Errorf("max-chats-per-agent must be at least 1, got %d", c.MaxChatsPerAgent))
	}
	if c.MaxQueue < 0 {
		errs = append(errs, fmt.Errorf("max-queue must not be negative, got %d", c.MaxQueue))
	}
	if c.HTTP == "" {
		errs = append(errs, errors.New("http address is empty"))
	}
	if c.Accounts == "" && c.OIDCIssuer == "" {
		errs = append(errs, errors.New("no login source: set accounts (an accounts file) or oidc-issuer"))
	}
	if c.OIDCIssuer != "" && c.OIDCClientID == "" {
		errs = append(errs, errors.New("oidc-issuer needs oidc-client-id"))
	}
	if c.SessionTTL <= 0 || c.SessionIdle <= 0 {
		errs = append(errs, fmt.Errorf("session-ttl and session-idle must be positive, got %s and %s", c.SessionTTL, c.SessionIdle))
	}
	if c.LoginFailuresPerAccount < 0 || c.LoginFailuresPerAddress < 0 || c.LoginBackoff <= 0 || c.LoginBackoffMax < c.LoginBackoff {
		errs = append(errs, errors.New("login throttle: failures must be >= 0, login-backoff positive and <= login-backoff-max"))
	}
	if c.Coordination != "" && c.LeaderLease < time.Second {
		errs = append(errs, fmt.Errorf("leader-lease must be at least 1s, got %s", c.LeaderLease))
	}
	return errors.Join(errs...)
}
