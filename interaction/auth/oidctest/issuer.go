// Package oidctest is a real OpenID Connect issuer for tests: it serves a
// discovery document, a JWKS, an authorization endpoint that signs the
// configured user in at once, and a token endpoint; it signs ID tokens with
// RS256 keys that a test can rotate.
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Issuer is a running identity provider. Its zero value is not usable;
// build it with NewIssuer.
type Issuer struct {
	// URL is the issuer URL (the httptest server's).
	URL string
	// ClientID is the audience its tokens carry by default.
	ClientID string

	srv *httptest.Server

	mu       sync.Mutex
	key      *rsa.PrivateKey
	kid      string
	keys     int
	user     map[string]any    // claims of the user /authorize signs in
	codes    map[string]string // code → nonce
	jwksHits int
}

// NewIssuer starts an issuer for clientID; it stops when the test ends.
func NewIssuer(t testing.TB, clientID string) *Issuer {
	t.Helper()
	is := &Issuer{ClientID: clientID, codes: map[string]string{}}
	is.Rotate()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", is.discovery)
	mux.HandleFunc("GET /jwks", is.jwks)
	mux.HandleFunc("GET /authorize", is.authorize)
	mux.HandleFunc("POST /token", is.token)
	is.srv = httptest.NewServer(mux)
	is.URL = is.srv.URL
	t.Cleanup(is.srv.Close)
	return is
}

// Rotate replaces the signing key: the JWKS then holds only the new key, so
// tokens signed with the old one stop verifying once a verifier refetches.
func (is *Issuer) Rotate() {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys++
	is.key, is.kid = k, fmt.Sprintf("key-%d", is.keys)
}

// JWKSFetches returns how many times the JWKS was served.
func (is *Issuer) JWKSFetches() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.jwksHits
}

// SetUser sets the claims of the user that /authorize signs in.
func (is *Issuer) SetUser(claims map[string]any) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.user = claims
}

// Claims returns standard claims for sub, valid for ttl from now, plus extra.
func (is *Issuer) Claims(sub string, ttl time.Duration, extra map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{"iss": is.URL, "sub": sub, "aud": is.ClientID, "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// Sign signs claims with the current key.
func (is *Issuer) Sign(claims map[string]any) string {
	is.mu.Lock()
	k, kid := is.key, is.kid
	is.mu.Unlock()
	return sign(k, kid, claims)
}

// SignForeign signs claims with a key the issuer never published, under the
// current key id: a forged token.
func (is *Issuer) SignForeign(claims map[string]any) string {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	is.mu.Lock()
	kid := is.kid
	is.mu.Unlock()
	return sign(k, kid, claims)
}

func sign(k *rsa.PrivateKey, kid string, claims map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		panic(err)
	}
	b, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	jws, err := s.Sign(b)
	if err != nil {
		panic(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		panic(err)
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (is *Issuer) discovery(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]any{
		"issuer": is.URL, "jwks_uri": is.URL + "/jwks",
		"authorization_endpoint": is.URL + "/authorize", "token_endpoint": is.URL + "/token",
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
	})
}

func (is *Issuer) jwks(w http.ResponseWriter, r *http.Request) {
	is.mu.Lock()
	is.jwksHits++
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}}
	is.mu.Unlock()
	writeJSON(w, set)
}

// authorize signs the configured user in at once and sends the browser back
// with a code.
func (is *Issuer) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != is.ClientID || q.Get("response_type") != "code" || q.Get("code_challenge") == "" {
		http.Error(w, "bad authorization request", http.StatusBadRequest)
		return
	}
	code := rand.Text()
	is.mu.Lock()
	is.codes[code] = q.Get("nonce")
	is.mu.Unlock()
	u, err := url.Parse(q.Get("redirect_uri"))
	if err != nil {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	v := u.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	u.RawQuery = v.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (is *Issuer) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	is.mu.Lock()
	nonce, ok := is.codes[r.PostForm.Get("code")]
	delete(is.codes, r.PostForm.Get("code"))
	user := is.user
	is.mu.Unlock()
	if !ok || r.PostForm.Get("code_verifier") == "" {
		w.WriteHeader(http.StatusBadRequest)
		writeJSON(w, map[string]string{"error": "invalid_grant"})
		return
	}
	sub, _ := user["sub"].(string)
	claims := is.Claims(sub, 5*time.Minute, user)
	claims["nonce"] = nonce
	writeJSON(w, map[string]any{"access_token": rand.Text(), "token_type": "Bearer", "expires_in": 300, "id_token": is.Sign(claims)})
}
