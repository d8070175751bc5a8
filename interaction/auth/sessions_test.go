package auth

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestSessionsExpireAndRevoke(t *testing.T) {
	s := NewSessions(SessionConfig{TTL: time.Hour, Idle: 10 * time.Minute})
	t0 := time.Unix(1000, 0)
	ada := Identity{ID: "ada", Role: RoleAgent}
	tok, err := s.Open(ada, t0)
	if err != nil || len(tok) != 64 {
		t.Fatalf("open: %q %v", tok, err)
	}
	tok2, _ := s.Open(ada, t0)
	if tok2 == tok {
		t.Fatal("two sessions share a token")
	}
	// Activity keeps a session alive up to the TTL.
	for m := 5; m < 60; m += 5 {
		if id, err := s.Use(tok, t0.Add(time.Duration(m)*time.Minute)); err != nil || id.ID != "ada" {
			t.Fatalf("use at %d min: %+v %v", m, id, err)
		}
	}
	if _, err := s.Use(tok, t0.Add(time.Hour)); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("use at the TTL: %v", err)
	}
	// tok2 was idle.
	if _, err := s.Use(tok2, t0.Add(10*time.Minute)); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("idle session: %v", err)
	}
	if _, err := s.Use("nope", t0); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("unknown token: %v", err)
	}
	t3, _ := s.Open(ada, t0)
	t4, _ := s.Open(Identity{ID: "sam"}, t0)
	s.Revoke(t4)
	if _, err := s.Use(t4, t0); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("revoked: %v", err)
	}
	if n := s.RevokeUser("ada"); n != 1 {
		t.Fatalf("RevokeUser revoked %d, want 1", n)
	}
	if _, err := s.Use(t3, t0); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("revoked user: %v", err)
	}
}

func TestSessionsSweep(t *testing.T) {
	s := NewSessions(SessionConfig{TTL: time.Hour, Idle: time.Minute})
	t0 := time.Unix(1000, 0)
	s.Open(Identity{ID: "ada"}, t0)
	s.Open(Identity{ID: "sam"}, t0)
	late, _ := s.Open(Identity{ID: "sam"}, t0.Add(50*time.Second))
	gone := s.Sweep(t0.Add(70 * time.Second))
	if !slices.Equal(gone, []string{"ada"}) {
		t.Fatalf("sweep: %v, want [ada] (sam has a live session)", gone)
	}
	if _, err := s.Use(late, t0.Add(70*time.Second)); err != nil {
		t.Fatalf("live session swept: %v", err)
	}
}

// One user's logins cannot grow the store without bound: the least recently
// used session ends first.
func TestSessionsPerUserBound(t *testing.T) {
	s := NewSessions(SessionConfig{TTL: time.Hour, Idle: time.Hour})
	t0 := time.Unix(1000, 0)
	var toks []string
	for i := range maxSessionsPerUser {
		tok, _ := s.Open(Identity{ID: "ada"}, t0.Add(time.Duration(i)*time.Second))
		toks = append(toks, tok)
	}
	if _, err := s.Use(toks[0], t0.Add(time.Minute)); err != nil { // the first is now the most recent
		t.Fatal(err)
	}
	other, _ := s.Open(Identity{ID: "sam"}, t0)
	s.Open(Identity{ID: "ada"}, t0.Add(2*time.Minute))
	if _, err := s.Use(toks[1], t0.Add(2*time.Minute)); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("the least recently used session survived: %v", err)
	}
	for _, tok := range []string{toks[0], toks[2], other} {
		if _, err := s.Use(tok, t0.Add(2*time.Minute)); err != nil {
			t.Fatalf("a session that should live ended: %v", err)
		}
	}
}
