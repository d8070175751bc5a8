package demo

import (
	"crypto/rand"
	"fmt"

	"github.com/hachat/hachat/interaction/auth"
)

// AccountSpec names an account to create: its user (agent id) and role.
type AccountSpec struct {
	User string
	Role string
}

// DemoAccounts are the accounts `hachat demo` creates: two agents and a
// supervisor.
func DemoAccounts() []AccountSpec {
	return []AccountSpec{
		{User: "ada", Role: auth.RoleAgent},
		{User: "grace", Role: auth.RoleAgent},
		{User: "sam", Role: auth.RoleSupervisor},
	}
}

// WriteAccounts replaces the accounts file at path with specs, each with a
// fresh random password, and returns the credentials (for the state file:
// the file itself holds only hashes).
func WriteAccounts(path string, specs []AccountSpec) ([]AccountCredential, error) {
	accounts := make([]auth.Account, 0, len(specs))
	creds := make([]AccountCredential, 0, len(specs))
	for _, sp := range specs {
		pw := rand.Text()
		hash, err := auth.HashPassword(pw, auth.DefaultHashParams())
		if err != nil {
			return nil, fmt.Errorf("account %s: %w", sp.User, err)
		}
		accounts = append(accounts, auth.Account{ID: sp.User, Role: sp.Role, Hash: hash})
		creds = append(creds, AccountCredential{User: sp.User, Password: pw, Role: sp.Role})
	}
	if err := auth.WriteAccounts(path, accounts); err != nil {
		return nil, err
	}
	return creds, nil
}
