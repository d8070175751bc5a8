package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"
)

// SessionConfig bounds the life of a session.
type SessionConfig struct {
	// TTL is the longest a session lives after login (a shift).
	TTL time.Duration
	// Idle ends a session that made no request (an open push channel counts)
	// for this long.
	Idle time.Duration
}

// DefaultSessionConfig: 12 h after login, 30 min idle.
func DefaultSessionConfig() SessionConfig {
	return SessionConfig{TTL: 12 * time.Hour, Idle: 30 * time.Minute}
}

type session struct {
	id       Identity
	created  time.Time
	lastSeen time.Time
}

// Sessions holds the sessions that logins opened. Tokens are 256-bit random
// strings; only their SHA-256 is kept, and lookups go by that digest, so
// neither a memory dump nor the timing of a lookup reveals a live token.
type Sessions struct {
	cfg SessionConfig

	mu   sync.Mutex
	byID map[[32]byte]*session
}

// NewSessions returns an empty session store.
func NewSessions(cfg SessionConfig) *Sessions {
	return &Sessions{cfg: cfg, byID: map[[32]byte]*session{}}
}

func digest(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// Len returns how many sessions are open (expired ones count until Use or
// Sweep meets them).
func (s *Sessions) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// Open starts a session for id and returns its token.
func (s *Sessions) Open(id Identity, now time.Time) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("session token: %w", err)
	}
	tok := hex.EncodeToString(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	// One user's logins cannot grow the store without bound: past
	// maxSessionsPerUser, the least recently used one ends.
	var oldest [32]byte
	n := 0
	for d, ss := range s.byID {
		if ss.id.ID != id.ID {
			continue
		}
		if n == 0 || ss.lastSeen.Before(s.byID[oldest].lastSeen) {
			oldest = d
		}
		n++
	}
	if n >= maxSessionsPerUser {
		delete(s.byID, oldest)
	}
	s.byID[digest(tok)] = &session{id: id, created: now, lastSeen: now}
	return tok, nil
}

// maxSessionsPerUser bounds the sessions (tabs, devices) of one user.
const maxSessionsPerUser = 16

func (s *Sessions) expired(ss *session, now time.Time) bool {
	return now.Sub(ss.created) >= s.cfg.TTL || now.Sub(ss.lastSeen) >= s.cfg.Idle
}

// Use resolves token, counts the call as activity and returns the identity.
// An unknown, expired or revoked token is ErrSessionUnknown.
func (s *Sessions) Use(token string, now time.Time) (Identity, error) {
	d := digest(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.byID[d]
	if !ok {
		return Identity{}, ErrSessionUnknown
	}
	if s.expired(ss, now) {
		delete(s.byID, d)
		return Identity{}, ErrSessionUnknown
	}
	ss.lastSeen = now
	return ss.id, nil
}

// Revoke ends the session of token.
func (s *Sessions) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, digest(token))
}

// RevokeUser ends every session of user id and returns how many there were.
func (s *Sessions) RevokeUser(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for d, ss := range s.byID {
		if ss.id.ID == id {
			delete(s.byID, d)
			n++
		}
	}
	return n
}

// Sweep forgets expired sessions and returns the users who lost their last
// session, so that the caller can log them out of routing.
func (s *Sessions) Sweep(now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	live := map[string]bool{}
	gone := map[string]bool{}
	for d, ss := range s.byID {
		if s.expired(ss, now) {
			delete(s.byID, d)
			gone[ss.id.ID] = true
		} else {
			live[ss.id.ID] = true
		}
	}
	var out []string
	for id := range gone {
		if !live[id] {
			out = append(out, id)
		}
	}
	return out
}

// SessionRecord is one session as a state store keeps it: the SHA-256 of
// its token (never the token), the identity and the times that bound it.
type SessionRecord struct {
	// Digest is the hex SHA-256 of the session token.
	Digest   string    `json:"digest"`
	Identity Identity  `json:"identity"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"lastSeen"`
}

// Export returns every open session, for a state store that lets another
// instance carry on with the same tokens.
func (s *Sessions) Export() []SessionRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionRecord, 0, len(s.byID))
	for d, ss := range s.byID {
		out = append(out, SessionRecord{Digest: hex.EncodeToString(d[:]), Identity: ss.id, Created: ss.created, LastSeen: ss.lastSeen})
	}
	return out
}

// Restore replaces every session with recs (as Export returned them). A
// record whose digest is not a hex SHA-256 is refused and nothing changes.
func (s *Sessions) Restore(recs []SessionRecord) error {
	byID := make(map[[32]byte]*session, len(recs))
	for _, r := range recs {
		b, err := hex.DecodeString(r.Digest)
		if err != nil || len(b) != 32 {
			return fmt.Errorf("session record: digest %q is not a hex SHA-256", r.Digest)
		}
		byID[[32]byte(b)] = &session{id: r.Identity, created: r.Created, lastSeen: r.LastSeen}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID = byID
	return nil
}
