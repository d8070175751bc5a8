package interaction

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/hachat/hachat/interaction/auth"
)

// authn is the Server's identity side: the login sources, the throttle of
// failed logins and the sessions. A redirect sign-in in flight keeps its
// state in the browser (a cookie), so unauthenticated callers cannot fill
// the server's memory with sign-ins.
type authn struct {
	accounts *auth.Accounts // nil: no accounts file
	oidc     *auth.OIDC     // nil: no identity provider
	throttle *auth.Throttle
	sessions *auth.Sessions
}

// The redirect sign-in's cookie: "<state>.<nonce>.<PKCE verifier>", HttpOnly,
// SameSite=Lax, scoped to /agent/v1/oidc/, living signInTTL.
const (
	signInTTL      = 10 * time.Minute
	oidcCookieName = "hachat_oidc"
)

func newAuthn(ctx context.Context, cfg Config) (*authn, error) {
	a := &authn{
		throttle: auth.NewThrottle(auth.ThrottleConfig{AccountFree: cfg.LoginFailuresPerAccount, AddressFree: cfg.LoginFailuresPerAddress,
			Base: cfg.LoginBackoff, Max: cfg.LoginBackoffMax, Forget: 15 * time.Minute}),
		sessions: auth.NewSessions(auth.SessionConfig{TTL: cfg.SessionTTL, Idle: cfg.SessionIdle}),
	}
	if cfg.Accounts != "" {
		acc, err := auth.OpenAccounts(cfg.Accounts)
		if err != nil {
			return nil, fmt.Errorf("accounts: %w", err)
		}
		a.accounts = acc
	}
	if cfg.OIDCIssuer != "" {
		o, err := auth.NewOIDC(ctx, auth.OIDCConfig{Issuer: cfg.OIDCIssuer, ClientID: cfg.OIDCClientID,
			ClientSecret: cfg.OIDCClientSecret, RedirectURL: cfg.OIDCRedirectURL,
			IDClaim: cfg.OIDCIDClaim, RoleClaim: cfg.OIDCRoleClaim})
		if err != nil {
			return nil, err
		}
		a.oidc = o
	}
	return a, nil
}

// clientAddr is the address failed logins are counted against: the peer's
// IP. X-Forwarded-For is not trusted (a client could make up one per try).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// authErr turns an error of package auth into the agent API's classes.
func authErr(err error) error {
	var te *auth.ThrottledError
	switch {
	case errors.As(err, &te):
		return fmt.Errorf("%w: %w", ErrTooMany, te)
	case errors.Is(err, auth.ErrBadCredentials):
		return fmt.Errorf("%w: invalid agent id or password", ErrUnauthorized)
	case errors.Is(err, auth.ErrNoRole):
		return fmt.Errorf("%w: %w", ErrForbidden, err)
	case errors.Is(err, auth.ErrNoSource):
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	default: // the identity provider cannot be reached
		return fmt.Errorf("%w: identity provider: %w", ErrUnauthorized, err)
	}
}

// checkPassword proves a built-in login, throttled per account and address.
func (s *Server) checkPassword(id, password, addr string) (auth.Identity, error) {
	a := s.authn
	if a.accounts == nil {
		return auth.Identity{}, fmt.Errorf("%w: password logins (no accounts file)", auth.ErrNoSource)
	}
	if err := a.throttle.Allow(id, addr, s.now()); err != nil {
		return auth.Identity{}, err
	}
	if _, err := a.accounts.Reload(); err != nil {
		s.log.Error("accounts file unusable, keeping the last good one", "err", err)
	}
	ident, err := a.accounts.Check(id, password)
	if err != nil {
		a.throttle.Failed(id, addr, s.now())
		return auth.Identity{}, err
	}
	a.throttle.Succeeded(id)
	return ident, nil
}

// checkToken proves a login by an identity provider's ID token, throttled
// per client address.
func (s *Server) checkToken(ctx context.Context, raw, addr string) (auth.Identity, error) {
	a := s.authn
	if a.oidc == nil {
		return auth.Identity{}, fmt.Errorf("%w: identity-provider logins (no oidc-issuer)", auth.ErrNoSource)
	}
	if err := a.throttle.Allow("", addr, s.now()); err != nil {
		return auth.Identity{}, err
	}
	ident, err := a.oidc.Verify(ctx, raw)
	if errors.Is(err, auth.ErrBadCredentials) {
		a.throttle.Failed("", addr, s.now())
	}
	return ident, err
}

// openSession logs a proven identity into routing and opens a session.
func (s *Server) openSession(ident auth.Identity, nickname string) (string, stateJSON, error) {
	if nickname == "" {
		nickname = ident.Nickname
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.router.Login(ident.ID, nickname, Role(ident.Role), s.now()); err != nil {
		return "", stateJSON{}, err
	}
	tok, err := s.authn.sessions.Open(ident, s.now())
	if err != nil {
		return "", stateJSON{}, fmt.Errorf("%w: %w", ErrCore, err)
	}
	s.log.Info("agent logged in", "agent", ident.ID, "nickname", nickname, "role", ident.Role, "via", ident.Source)
	return tok, s.stateLocked(ident.ID), nil
}

// session resolves a session token to its identity. A session whose
// built-in account was removed ends here.
func (s *Server) session(token string) (auth.Identity, error) {
	ident, err := s.authn.sessions.Use(token, s.now())
	if err != nil {
		return ident, fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	if ident.Source == "accounts" && s.authn.accounts != nil {
		if _, err := s.authn.accounts.Reload(); err != nil {
			s.log.Error("accounts file unusable, keeping the last good one", "err", err)
		}
		if !s.authn.accounts.Exists(ident.ID) {
			s.authn.sessions.RevokeUser(ident.ID)
			return auth.Identity{}, fmt.Errorf("%w: account removed", ErrUnauthorized)
		}
	}
	return ident, nil
}

// sessionSweeper ends expired sessions every interval; an agent left
// without a session is made not ready and, holding no chats, logged out of
// routing, so that no chat is offered to a desktop nobody watches.
func (s *Server) sessionSweeper(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, id := range s.authn.sessions.Sweep(s.now()) {
			s.mu.Lock()
			if av, ok := s.router.Agent(id); ok && av.Role == RoleAgent && av.Ready {
				if ns, err := s.router.SetReady(id, false, s.now()); err == nil {
					s.apply(ns)
				}
			}
			if len(s.byAgent[id]) == 0 {
				if ns, err := s.router.Logout(id, s.now()); err == nil {
					s.apply(ns)
					delete(s.ended, id)
					s.hub.publish(id, newMsg(evLoggedOut, struct{}{}))
					s.hub.closeAgent(id)
				}
			}
			s.mu.Unlock()
			s.log.Info("session expired", "agent", id)
		}
	}
}

// ---- HTTP: login, login options, redirect sign-in ----

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeErr(w, err)
		return
	}
	var ident auth.Identity
	nickname := ""
	if raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		// An identity provider's ID token; the body, if any, must be empty or {}.
		if t := strings.TrimSpace(string(body)); t != "" && t != "{}" {
			writeErr(w, badRequest("a login with a bearer token takes no body"))
			return
		}
		ident, err = s.checkToken(r.Context(), strings.TrimSpace(raw), clientAddr(r))
	} else {
		var req loginRequest
		if req, err = decodeLogin(body); err != nil {
			writeErr(w, err)
			return
		}
		nickname = req.Nickname
		noteCaller(w, req.AgentID)
		if req.Password == "" {
			writeErr(w, fmt.Errorf("%w: password required", ErrUnauthorized))
			return
		}
		ident, err = s.checkPassword(req.AgentID, req.Password, clientAddr(r))
	}
	if err != nil {
		writeErr(w, authErr(err))
		return
	}
	tok, st, err := s.openSession(ident, nickname)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Token string `json:"token"`
		stateJSON
	}{tok, st})
}

// handleLoginOptions tells the desktop which login methods exist.
func (s *Server) handleLoginOptions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Password bool `json:"password"`
		OIDC     bool `json:"oidc"`
	}{s.authn.accounts != nil, s.authn.oidc != nil && s.authn.oidc.RedirectEnabled()})
}

func randomString() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// handleOIDCStart sends the browser to the identity provider.
func (s *Server) handleOIDCStart(w http.ResponseWriter, r *http.Request) {
	a := s.authn
	if a.oidc == nil || !a.oidc.RedirectEnabled() {
		writeErr(w, fmt.Errorf("%w: no identity provider sign-in configured", ErrNotFound))
		return
	}
	state, err1 := randomString()
	nonce, err2 := randomString()
	if err := errors.Join(err1, err2); err != nil {
		writeErr(w, fmt.Errorf("%w: %w", ErrCore, err))
		return
	}
	verifier := oauth2.GenerateVerifier()
	u, err := a.oidc.AuthCodeURL(state, nonce, verifier)
	if err != nil {
		writeErr(w, authErr(err))
		return
	}
	http.SetCookie(w, &http.Cookie{Name: oidcCookieName, Value: state + "." + nonce + "." + verifier, Path: "/agent/v1/oidc/",
		MaxAge: int(signInTTL / time.Second), HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil})
	http.Redirect(w, r, u, http.StatusFound)
}

// handleOIDCCallback redeems the code, opens a session and hands its token
// to the desktop in the URL fragment (never sent to a server).
func (s *Server) handleOIDCCallback(w http.ResponseWriter, r *http.Request) {
	a := s.authn
	if a.oidc == nil {
		writeErr(w, fmt.Errorf("%w: no identity provider sign-in configured", ErrNotFound))
		return
	}
	q := r.URL.Query()
	state := q.Get("state")
	c, err := r.Cookie(oidcCookieName)
	var parts []string
	if err == nil {
		parts = strings.Split(c.Value, ".")
	}
	if state == "" || len(parts) != 3 || subtle.ConstantTimeCompare([]byte(parts[0]), []byte(state)) != 1 {
		writeErr(w, fmt.Errorf("%w: sign-in state does not match this browser (or it expired); start again", ErrUnauthorized))
		return
	}
	nonce, verifier := parts[1], parts[2]
	http.SetCookie(w, &http.Cookie{Name: oidcCookieName, Value: "", Path: "/agent/v1/oidc/", MaxAge: -1, HttpOnly: true})
	if e := q.Get("error"); e != "" {
		writeErr(w, fmt.Errorf("%w: identity provider answered %s", ErrUnauthorized, strconv.Quote(e)))
		return
	}
	ident, err := a.oidc.Exchange(r.Context(), q.Get("code"), nonce, verifier)
	if err != nil {
		writeErr(w, authErr(err))
		return
	}
	tok, _, err := s.openSession(ident, "")
	if err != nil {
		writeErr(w, err)
		return
	}
	http.Redirect(w, r, "/agent#session="+tok, http.StatusSeeOther)
}
