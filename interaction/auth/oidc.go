package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// OIDCConfig configures OpenID Connect logins.
type OIDCConfig struct {
	// Issuer is the identity provider's issuer URL; its discovery document is
	// Issuer + "/.well-known/openid-configuration". Empty disables OIDC.
	Issuer string
	// ClientID is this application's client id: tokens must name it in aud.
	ClientID string
	// ClientSecret is the client secret for the authorization-code flow of
	// the desktop's "sign in with the identity provider" (empty: a public
	// client, PKCE only).
	ClientSecret string
	// RedirectURL is where the identity provider sends the browser back
	// (the interaction server's /agent/v1/oidc/callback).
	RedirectURL string
	// IDClaim is the claim that holds the agent id (default
	// "preferred_username").
	IDClaim string
	// RoleClaim is the claim that holds the role: a string or a list of
	// strings; "supervisor" wins over "agent" (default "hachat_role").
	RoleClaim string
	// HTTPTimeout bounds each request to the identity provider (default 10s).
	HTTPTimeout time.Duration
}

// OIDC verifies bearer tokens of an identity provider against its JWKS
// (fetched from the discovery document, refetched when a token names an
// unknown key, so key rotation needs no restart) and runs the
// authorization-code flow for the desktop.
type OIDC struct {
	cfg    OIDCConfig
	base   context.Context // carries the HTTP client; key refreshes run under it
	client *http.Client

	mu       sync.Mutex
	provider *oidc.Provider // nil until discovery succeeded
}

// NewOIDC returns an OIDC verifier for cfg. Discovery happens at the first
// use and is retried at each use until it succeeds, so the server starts
// while the identity provider is away. ctx bounds the verifier's life: key
// set refreshes stop when it is done.
func NewOIDC(ctx context.Context, cfg OIDCConfig) (*OIDC, error) {
	if cfg.Issuer == "" {
		return nil, fmt.Errorf("%w: no OIDC issuer", ErrNoSource)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("oidc: a client id (the audience of tokens) is required")
	}
	if cfg.IDClaim == "" {
		cfg.IDClaim = "preferred_username"
	}
	if cfg.RoleClaim == "" {
		cfg.RoleClaim = "hachat_role"
	}
	if cfg.HTTPTimeout <= 0 {
		cfg.HTTPTimeout = 10 * time.Second
	}
	client := &http.Client{Timeout: cfg.HTTPTimeout}
	return &OIDC{cfg: cfg, base: oidc.ClientContext(ctx, client), client: client}, nil
}

// RedirectEnabled reports whether the authorization-code flow is configured
// (a redirect URL is set).
func (o *OIDC) RedirectEnabled() bool { return o.cfg.RedirectURL != "" }

func (o *OIDC) discover() (*oidc.Provider, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.provider != nil {
		return o.provider, nil
	}
	p, err := oidc.NewProvider(o.base, o.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc discovery at %s: %w", o.cfg.Issuer, err)
	}
	o.provider = p
	return p, nil
}

// Verify checks a raw ID token (signature against the JWKS, issuer,
// audience, expiry) and maps its claims to an identity. A token that does
// not verify is ErrBadCredentials; a verified one without a usable id or
// role is ErrNoRole. ctx bounds the call, including a key refresh.
func (o *OIDC) Verify(ctx context.Context, raw string) (Identity, error) {
	p, err := o.discover()
	if err != nil {
		return Identity{}, err
	}
	tok, err := p.Verifier(&oidc.Config{ClientID: o.cfg.ClientID}).Verify(oidc.ClientContext(ctx, o.client), raw)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrBadCredentials, err)
	}
	return o.identity(tok)
}

func (o *OIDC) identity(tok *oidc.IDToken) (Identity, error) {
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return Identity{}, fmt.Errorf("%w: claims: %w", ErrBadCredentials, err)
	}
	id, _ := claims[o.cfg.IDClaim].(string)
	if err := CheckID(id); err != nil {
		return Identity{}, fmt.Errorf("%w: claim %q: %w", ErrNoRole, o.cfg.IDClaim, err)
	}
	role := roleFromClaim(claims[o.cfg.RoleClaim])
	if role == "" {
		return Identity{}, fmt.Errorf("%w: claim %q holds neither agent nor supervisor", ErrNoRole, o.cfg.RoleClaim)
	}
	nick, _ := claims["name"].(string)
	nick = strings.TrimSpace(nick)
	if nick == "" || utf8.RuneCountInString(nick) > 64 || !utf8.ValidString(nick) || strings.ContainsFunc(nick, isControl) {
		nick = id
	}
	return Identity{ID: id, Nickname: nick, Role: role, Source: "oidc"}, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

// roleFromClaim reads a role claim: a string or a list of strings.
func roleFromClaim(v any) string {
	var vals []string
	switch c := v.(type) {
	case string:
		vals = strings.Fields(c)
	case []any:
		for _, e := range c {
			if s, ok := e.(string); ok {
				vals = append(vals, s)
			}
		}
	}
	role := ""
	for _, s := range vals {
		switch s {
		case RoleSupervisor:
			return RoleSupervisor
		case RoleAgent:
			role = RoleAgent
		}
	}
	return role
}

func (o *OIDC) oauth2(p *oidc.Provider) *oauth2.Config {
	return &oauth2.Config{ClientID: o.cfg.ClientID, ClientSecret: o.cfg.ClientSecret, RedirectURL: o.cfg.RedirectURL,
		Endpoint: p.Endpoint(), Scopes: []string{oidc.ScopeOpenID, "profile"}}
}

// AuthCodeURL returns the identity provider's authorization URL for one
// sign-in: state and nonce are random per sign-in, verifier is the PKCE
// verifier (oauth2.GenerateVerifier) the callback will need.
func (o *OIDC) AuthCodeURL(state, nonce, verifier string) (string, error) {
	p, err := o.discover()
	if err != nil {
		return "", err
	}
	return o.oauth2(p).AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), nil
}

// Exchange redeems an authorization code at the token endpoint, verifies the
// ID token it returns and checks its nonce.
func (o *OIDC) Exchange(ctx context.Context, code, nonce, verifier string) (Identity, error) {
	p, err := o.discover()
	if err != nil {
		return Identity{}, err
	}
	ctx = oidc.ClientContext(ctx, o.client)
	t, err := o.oauth2(p).Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		return Identity{}, fmt.Errorf("%w: code exchange: %w", ErrBadCredentials, err)
	}
	raw, _ := t.Extra("id_token").(string)
	if raw == "" {
		return Identity{}, fmt.Errorf("%w: the token answer holds no id_token", ErrBadCredentials)
	}
	tok, err := p.Verifier(&oidc.Config{ClientID: o.cfg.ClientID}).Verify(ctx, raw)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrBadCredentials, err)
	}
	if tok.Nonce != nonce {
		return Identity{}, fmt.Errorf("%w: nonce mismatch", ErrBadCredentials)
	}
	return o.identity(tok)
}
