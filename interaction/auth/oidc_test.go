package auth_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/interaction/auth"
	"github.com/hachat/hachat/interaction/auth/oidctest"
)

func newVerifier(t *testing.T, is *oidctest.Issuer) *auth.OIDC {
	t.Helper()
	o, err := auth.NewOIDC(t.Context(), auth.OIDCConfig{Issuer: is.URL, ClientID: is.ClientID, RoleClaim: "roles"})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// TestOIDCVerifyAgainstRealIssuer runs the verifier against an issuer
// serving discovery and JWKS over HTTP: good tokens map to identities with
// the role from the configured claim; the key rotates mid-test; expired,
// wrongly signed, wrong-audience and role-less tokens are refused.
func TestOIDCVerifyAgainstRealIssuer(t *testing.T) {
	is := oidctest.NewIssuer(t, "hachat-desktop")
	o := newVerifier(t, is)
	ctx := t.Context()

	agentTok := is.Sign(is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": []string{"staff", "agent"}, "name": "Ada L"}))
	id, err := o.Verify(ctx, agentTok)
	if err != nil {
		t.Fatalf("verify agent token: %v", err)
	}
	if id.ID != "ada" || id.Role != auth.RoleAgent || id.Nickname != "Ada L" || id.Source != "oidc" {
		t.Fatalf("identity %+v", id)
	}
	sup, err := o.Verify(ctx, is.Sign(is.Claims("u2", time.Minute, map[string]any{"preferred_username": "sam", "roles": "agent supervisor"})))
	if err != nil || sup.Role != auth.RoleSupervisor || sup.Nickname != "sam" {
		t.Fatalf("supervisor token: %+v %v", sup, err)
	}

	refused := func(what, tok string, want error) {
		t.Helper()
		if _, err := o.Verify(ctx, tok); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	refused("expired", is.Sign(is.Claims("u1", -time.Minute, map[string]any{"preferred_username": "ada", "roles": "agent"})), auth.ErrBadCredentials)
	refused("wrongly signed", is.SignForeign(is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": "supervisor"})), auth.ErrBadCredentials)
	wrongAud := is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": "agent"})
	wrongAud["aud"] = "another-app"
	refused("wrong audience", is.Sign(wrongAud), auth.ErrBadCredentials)
	wrongIss := is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": "agent"})
	wrongIss["iss"] = "https://evil.example"
	refused("wrong issuer", is.Sign(wrongIss), auth.ErrBadCredentials)
	refused("no role", is.Sign(is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": "staff"})), auth.ErrNoRole)
	refused("bad id claim", is.Sign(is.Claims("u1", time.Minute, map[string]any{"preferred_username": "a b", "roles": "agent"})), auth.ErrNoRole)
	refused("garbage", "not.a.jwt", auth.ErrBadCredentials)
	refused("alg none", "eyJhbGciOiJub25lIn0."+strings.Split(agentTok, ".")[1]+".", auth.ErrBadCredentials)

	// Rotate the key: the verifier fetches the new JWKS for the new key id,
	// and from then on the old key's tokens are refused.
	oldKeyTok := is.Sign(is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": "agent"}))
	fetches := is.JWKSFetches()
	is.Rotate()
	newTok := is.Sign(is.Claims("u1", time.Minute, map[string]any{"preferred_username": "ada", "roles": "agent"}))
	if _, err := o.Verify(ctx, newTok); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}
	if is.JWKSFetches() <= fetches {
		t.Fatal("the verifier did not refetch the JWKS after the rotation")
	}
	// go-oidc hands the refetched keys to the waiting verification a moment
	// before it swaps its cache, so an old-key token may pass once in that
	// window; it must be refused right after.
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := o.Verify(ctx, oldKeyTok)
		if errors.Is(err, auth.ErrBadCredentials) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("old key after rotation: %v, want ErrBadCredentials", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOIDCIssuerAway: the server starts while the identity provider is
// away; logins fail until it answers, without a restart.
func TestOIDCIssuerAway(t *testing.T) {
	o, err := auth.NewOIDC(t.Context(), auth.OIDCConfig{Issuer: "http://127.0.0.1:1", ClientID: "x", HTTPTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Verify(t.Context(), "a.b.c"); err == nil || errors.Is(err, auth.ErrBadCredentials) {
		t.Fatalf("verify with the issuer away: %v, want a discovery error", err)
	}
}

// FuzzVerifyToken: no string verifies but a token the issuer signed, and
// none panics the parser.
func FuzzVerifyToken(f *testing.F) {
	is := oidctest.NewIssuer(f, "fuzz")
	o, err := auth.NewOIDC(context.Background(), auth.OIDCConfig{Issuer: is.URL, ClientID: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	good := is.Sign(is.Claims("u", time.Hour, map[string]any{"preferred_username": "ada", "hachat_role": "agent"}))
	if _, err := o.Verify(context.Background(), good); err != nil {
		f.Fatal(err)
	}
	parts := strings.Split(good, ".")
	for _, s := range []string{"", ".", "..", "a.b.c", good + "x", parts[0] + "." + parts[1] + ".", parts[0] + ".e30." + parts[2],
		"eyJhbGciOiJub25lIn0." + parts[1] + ".", strings.Repeat("A", 5000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if raw == good {
			return
		}
		if id, err := o.Verify(context.Background(), raw); err == nil {
			t.Fatalf("a token the issuer did not sign verified: %q → %+v", raw, id)
		}
	})
}
