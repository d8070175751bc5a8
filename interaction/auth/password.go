package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// HashParams are the argon2id parameters of a password hash. They are
// written into the hash, so raising them later keeps old hashes verifiable.
type HashParams struct {
	// Memory is the memory cost in KiB.
	Memory uint32
	// Time is the number of passes.
	Time uint32
	// Threads is the parallelism.
	Threads uint8
}

// DefaultHashParams are OWASP's argon2id minimum (19 MiB, 2 passes, 1
// thread): about 20-40 ms per login on a current core, small enough that
// a burst of logins does not starve the server of memory.
func DefaultHashParams() HashParams { return HashParams{Memory: 19 * 1024, Time: 2, Threads: 1} }

// Bounds that a hash read from a file may ask for: a hostile or corrupt
// accounts file must not make one login allocate gigabytes.
const (
	saltLen      = 16
	keyLen       = 32
	maxMemoryKiB = 1 << 20 // 1 GiB
	maxTime      = 16
	maxPassword  = 1024 // bytes; longer passwords are refused before hashing
)

// HashPassword returns the PHC-format argon2id hash of password
// ($argon2id$v=19$m=..,t=..,p=..$salt$key) with a fresh random salt.
func HashPassword(password string, p HashParams) (string, error) {
	if password == "" {
		return "", fmt.Errorf("%w: empty password", ErrBadCredentials)
	}
	if len(password) > maxPassword {
		return "", fmt.Errorf("%w: password longer than %d bytes", ErrBadCredentials, maxPassword)
	}
	if p.Memory < 8*uint32(p.Threads) || p.Memory > maxMemoryKiB || p.Time < 1 || p.Time > maxTime || p.Threads < 1 {
		return "", fmt.Errorf("argon2id parameters out of range: %+v", p)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, keyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// passwordHash is a parsed PHC argon2id hash.
type passwordHash struct {
	params    HashParams
	salt, key []byte
}

// parseHash parses a PHC argon2id hash, refusing parameters out of bounds.
func parseHash(s string) (passwordHash, error) {
	var h passwordHash
	f := strings.Split(s, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" {
		return h, fmt.Errorf("%w: not an argon2id hash", ErrBadAccountsFile)
	}
	var v int
	if _, err := fmt.Sscanf(f[2], "v=%d", &v); err != nil || v != argon2.Version {
		return h, fmt.Errorf("%w: unsupported argon2 version %q", ErrBadAccountsFile, f[2])
	}
	var m, t uint32
	var p uint8
	if n, err := fmt.Sscanf(f[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || n != 3 {
		return h, fmt.Errorf("%w: bad argon2 parameters %q", ErrBadAccountsFile, f[3])
	}
	if m < 8*uint32(p) || m > maxMemoryKiB || t < 1 || t > maxTime || p < 1 {
		return h, fmt.Errorf("%w: argon2 parameters out of range %q", ErrBadAccountsFile, f[3])
	}
	salt, err := base64.RawStdEncoding.DecodeString(f[4])
	if err != nil || len(salt) < 8 || len(salt) > 64 {
		return h, fmt.Errorf("%w: bad salt", ErrBadAccountsFile)
	}
	key, err := base64.RawStdEncoding.DecodeString(f[5])
	if err != nil || len(key) < 16 || len(key) > 64 {
		return h, fmt.Errorf("%w: bad key", ErrBadAccountsFile)
	}
	return passwordHash{params: HashParams{Memory: m, Time: t, Threads: p}, salt: salt, key: key}, nil
}

// verify reports whether password matches h. The comparison of the derived
// keys is constant-time.
func (h passwordHash) verify(password string) bool {
	tooLong := len(password) > maxPassword
	if tooLong {
		password = password[:maxPassword] // still pay for a hash: no early answer
	}
	key := argon2.IDKey([]byte(password), h.salt, h.params.Time, h.params.Memory, h.params.Threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(key, h.key) == 1 && !tooLong
}

// VerifyPassword reports whether password matches the PHC argon2id hash.
// An unparsable hash never matches.
func VerifyPassword(hash, password string) bool {
	h, err := parseHash(hash)
	if err != nil {
		return false
	}
	return h.verify(password)
}
