package demo

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/hachat/hachat/interaction/auth"
)

func TestWriteAccounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	creds, err := WriteAccounts(path, DemoAccounts())
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]bool{}
	acc, err := auth.OpenAccounts(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		id, err := acc.Check(c.User, c.Password)
		if err != nil || id.Role != c.Role {
			t.Fatalf("%s: %+v %v", c.User, id, err)
		}
		roles[c.Role] = true
	}
	if !roles["agent"] || !roles["supervisor"] {
		t.Fatalf("the demo lacks an agent or a supervisor: %+v", creds)
	}
	again, err := WriteAccounts(path, DemoAccounts())
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Password == creds[0].Password {
		t.Fatal("a new start reuses the old password")
	}
	l := Layout{Addrs: DefaultAddrs(), DataDir: "/d"}
	ia, _ := StandardPlan(l).Part("interaction")
	if !slices.Contains(ia.Args, "--accounts=/d/accounts.json") || l.AccountsFile() != "/d/accounts.json" {
		t.Fatalf("interaction args %q, accounts file %q", ia.Args, l.AccountsFile())
	}
}
