package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Account is one built-in user in the accounts file.
type Account struct {
	// ID is the agent id: 1 to 64 of ASCII letters, digits and . _ @ -.
	ID string `json:"id"`
	// Nickname is the name customers see (default the id).
	Nickname string `json:"nickname,omitempty"`
	// Role is RoleAgent or RoleSupervisor.
	Role string `json:"role"`
	// Hash is the PHC argon2id hash of the password.
	Hash string `json:"hash"`
}

// fileVersion is the version of the accounts file format.
const fileVersion = 1

// accountsFile is the JSON document of an accounts file.
type accountsFile struct {
	Version  int       `json:"version"`
	Accounts []Account `json:"accounts"`
}

// maxAccountsFile bounds the size of an accounts file read into memory.
const maxAccountsFile = 16 << 20

// CheckID reports whether id is a valid agent id: 1 to 64 of ASCII letters,
// digits and . _ @ -.
func CheckID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("agent id must be 1 to 64 bytes, got %d", len(id))
	}
	for _, r := range id {
		if r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("._@-", r)) {
			return fmt.Errorf("agent id %q may hold only letters, digits and . _ @ -", id)
		}
	}
	return nil
}

func (a Account) validate() error {
	if err := CheckID(a.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrBadAccountsFile, err)
	}
	if !ValidRole(a.Role) {
		return fmt.Errorf("%w: account %q has role %q, want agent or supervisor", ErrBadAccountsFile, a.ID, a.Role)
	}
	if _, err := parseHash(a.Hash); err != nil {
		return fmt.Errorf("account %q: %w", a.ID, err)
	}
	return nil
}

// ReadAccounts reads and validates an accounts file. A missing file is an
// error wrapping fs.ErrNotExist.
func ReadAccounts(path string) ([]Account, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	if len(b) > maxAccountsFile {
		return nil, fmt.Errorf("%w: %s larger than %d bytes", ErrBadAccountsFile, path, maxAccountsFile)
	}
	var f accountsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadAccountsFile, path, err)
	}
	if f.Version != fileVersion {
		return nil, fmt.Errorf("%w: %s has version %d, want %d", ErrBadAccountsFile, path, f.Version, fileVersion)
	}
	seen := map[string]bool{}
	for _, a := range f.Accounts {
		if err := a.validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if seen[a.ID] {
			return nil, fmt.Errorf("%w: %s: account %q twice", ErrBadAccountsFile, path, a.ID)
		}
		seen[a.ID] = true
	}
	return f.Accounts, nil
}

// WriteAccounts replaces the accounts file atomically (a temporary file in
// the same directory, mode 0600, then a rename), sorted by id.
func WriteAccounts(path string, accounts []Account) error {
	accounts = slices.Clone(accounts)
	slices.SortFunc(accounts, func(a, b Account) int { return strings.Compare(a.ID, b.ID) })
	for _, a := range accounts {
		if err := a.validate(); err != nil {
			return err
		}
	}
	if accounts == nil {
		accounts = []Account{}
	}
	b, err := json.MarshalIndent(accountsFile{Version: fileVersion, Accounts: accounts}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode accounts: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".accounts-*.json")
	if err != nil {
		return fmt.Errorf("write accounts: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write accounts: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write accounts: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write accounts: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write accounts: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write accounts: %w", err)
	}
	return nil
}

// AddAccount adds an account with password to the accounts file at path,
// creating the file if it does not exist. It fails with ErrAccountExists
// when the id is taken.
func AddAccount(path, id, nickname, role, password string, p HashParams) error {
	if err := CheckID(id); err != nil {
		return err
	}
	if !ValidRole(role) {
		return fmt.Errorf("role must be agent or supervisor, got %q", role)
	}
	accounts, err := ReadAccounts(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if slices.ContainsFunc(accounts, func(a Account) bool { return a.ID == id }) {
		return fmt.Errorf("%w: %q", ErrAccountExists, id)
	}
	hash, err := HashPassword(password, p)
	if err != nil {
		return err
	}
	return WriteAccounts(path, append(accounts, Account{ID: id, Nickname: nickname, Role: role, Hash: hash}))
}

// RemoveAccount removes the account id from the accounts file at path. It
// fails with ErrNoAccount when there is none.
func RemoveAccount(path, id string) error {
	accounts, err := ReadAccounts(path)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(accounts, func(a Account) bool { return a.ID == id })
	if i < 0 {
		return fmt.Errorf("%w: %q", ErrNoAccount, id)
	}
	return WriteAccounts(path, slices.Delete(accounts, i, i+1))
}

// Accounts checks passwords against an accounts file. It re-reads the file
// when its size or modification time changes, so `hachat accounts add` and
// `remove` take effect without a restart; a file that turns unreadable or
// invalid keeps the last good set (and the error is reported by Reload).
type Accounts struct {
	path  string
	dummy passwordHash // compared for unknown ids, so timing does not tell who exists

	mu      sync.Mutex
	byID    map[string]Account
	hashes  map[string]passwordHash
	size    int64
	modTime time.Time
}

// OpenAccounts reads the accounts file at path. A missing or invalid file is
// an error: a server with an accounts source must have accounts to check.
func OpenAccounts(path string) (*Accounts, error) {
	dummy, err := HashPassword("dummy password for unknown accounts", DefaultHashParams())
	if err != nil {
		return nil, err
	}
	dh, _ := parseHash(dummy) // just made: parses
	a := &Accounts{path: path, dummy: dh}
	if _, err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload re-reads the file if its size or modification time changed and
// reports whether it did. On error the previous accounts stay in force.
func (a *Accounts) Reload() (bool, error) {
	st, err := os.Stat(a.path)
	if err != nil {
		return false, fmt.Errorf("accounts file: %w", err)
	}
	a.mu.Lock()
	same := a.byID != nil && st.Size() == a.size && st.ModTime().Equal(a.modTime)
	a.mu.Unlock()
	if same {
		return false, nil
	}
	list, err := ReadAccounts(a.path)
	if err != nil {
		return false, err
	}
	byID := make(map[string]Account, len(list))
	hashes := make(map[string]passwordHash, len(list))
	for _, acc := range list {
		h, _ := parseHash(acc.Hash) // validated by ReadAccounts
		byID[acc.ID] = acc
		hashes[acc.ID] = h
	}
	dummy := a.dummy
	if len(list) > 0 && hashes[list[0].ID].params != dummy.params {
		// Unknown ids must cost what known ones do: take the file's parameters.
		if d, err := HashPassword("dummy password for unknown accounts", hashes[list[0].ID].params); err == nil {
			dummy, _ = parseHash(d)
		}
	}
	a.mu.Lock()
	a.byID, a.hashes, a.size, a.modTime, a.dummy = byID, hashes, st.Size(), st.ModTime(), dummy
	a.mu.Unlock()
	return true, nil
}

// Check proves id and password. It costs one argon2id hash whether or not
// the account exists (unknown ids are compared against a dummy hash), and
// compares keys in constant time. A failure is ErrBadCredentials whatever
// the reason.
func (a *Accounts) Check(id, password string) (Identity, error) {
	a.mu.Lock()
	acc, ok := a.byID[id]
	h, dummy := a.hashes[id], a.dummy
	a.mu.Unlock()
	if !ok {
		h = dummy
	}
	match := h.verify(password)
	if !ok || !match || password == "" {
		return Identity{}, ErrBadCredentials
	}
	nick := acc.Nickname
	if nick == "" {
		nick = acc.ID
	}
	return Identity{ID: acc.ID, Nickname: nick, Role: acc.Role, Source: "accounts"}, nil
}

// Exists reports whether id has an account right now (a removed account's
// sessions end at their next request).
func (a *Accounts) Exists(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.byID[id]
	return ok
}

// List returns the accounts, sorted by id.
func (a *Accounts) List() []Account {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Account, 0, len(a.byID))
	for _, acc := range a.byID {
		out = append(out, acc)
	}
	slices.SortFunc(out, func(x, y Account) int { return strings.Compare(x.ID, y.ID) })
	return out
}
