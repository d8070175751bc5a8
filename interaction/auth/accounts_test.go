package auth

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAccountsFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	if err := AddAccount(path, "ada", "Ada", RoleAgent, "pw-ada", cheap); err != nil {
		t.Fatal(err)
	}
	if err := AddAccount(path, "sam", "", RoleSupervisor, "pw-sam", cheap); err != nil {
		t.Fatal(err)
	}
	if err := AddAccount(path, "ada", "", RoleAgent, "other", cheap); !errors.Is(err, ErrAccountExists) {
		t.Fatalf("second add of ada: %v, want ErrAccountExists", err)
	}
	for _, bad := range []struct{ id, role string }{{"a b", RoleAgent}, {"", RoleAgent}, {"x", "king"}} {
		if err := AddAccount(path, bad.id, "", bad.role, "pw", cheap); err == nil {
			t.Fatalf("added %+v", bad)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("accounts file mode %v, want 0600", st.Mode().Perm())
	}
	list, err := ReadAccounts(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "ada" || list[0].Nickname != "Ada" || list[1].Role != RoleSupervisor {
		t.Fatalf("read back %+v", list)
	}
	if err := RemoveAccount(path, "ada"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveAccount(path, "ada"); !errors.Is(err, ErrNoAccount) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := ReadAccounts(filepath.Join(t.TempDir(), "none.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestReadAccountsRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	h, _ := HashPassword("pw", cheap)
	for name, body := range map[string]string{
		"not json":     "{",
		"version":      `{"version":2,"accounts":[]}`,
		"bad role":     `{"version":1,"accounts":[{"id":"a","role":"root","hash":"` + h + `"}]}`,
		"bad hash":     `{"version":1,"accounts":[{"id":"a","role":"agent","hash":"md5:abc"}]}`,
		"twice":        `{"version":1,"accounts":[{"id":"a","role":"agent","hash":"` + h + `"},{"id":"a","role":"agent","hash":"` + h + `"}]}`,
		"bad id":       `{"version":1,"accounts":[{"id":"a/b","role":"agent","hash":"` + h + `"}]}`,
		"unknown type": `{"version":"1"}`,
	} {
		p := filepath.Join(dir, "f.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadAccounts(p); !errors.Is(err, ErrBadAccountsFile) {
			t.Errorf("%s: %v, want ErrBadAccountsFile", name, err)
		}
	}
}

func TestAccountsCheckAndReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	if err := AddAccount(path, "ada", "Ada L", RoleAgent, "pw-ada", cheap); err != nil {
		t.Fatal(err)
	}
	a, err := OpenAccounts(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Check("ada", "pw-ada")
	if err != nil || id.ID != "ada" || id.Role != RoleAgent || id.Nickname != "Ada L" || id.Source != "accounts" {
		t.Fatalf("check ada: %+v %v", id, err)
	}
	for _, c := range []struct{ id, pw string }{{"ada", "wrong"}, {"ada", ""}, {"nobody", "pw-ada"}, {"nobody", ""}} {
		if _, err := a.Check(c.id, c.pw); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("check %+v: %v, want ErrBadCredentials", c, err)
		}
	}
	// The dummy hash of unknown ids takes the file's parameters.
	if a.dummy.params != cheap {
		t.Errorf("dummy hash parameters %+v, want the file's %+v", a.dummy.params, cheap)
	}
	// add and remove take effect at the next reload.
	time.Sleep(10 * time.Millisecond) // a distinct modification time
	if err := AddAccount(path, "sam", "", RoleSupervisor, "pw-sam", cheap); err != nil {
		t.Fatal(err)
	}
	if changed, err := a.Reload(); err != nil || !changed {
		t.Fatalf("reload after add: %v %v", changed, err)
	}
	if id, err := a.Check("sam", "pw-sam"); err != nil || id.Role != RoleSupervisor {
		t.Fatalf("sam after reload: %+v %v", id, err)
	}
	if err := RemoveAccount(path, "ada"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if a.Exists("ada") {
		t.Fatal("ada still exists after remove and reload")
	}
	// A broken file keeps the last good accounts.
	if err := os.WriteFile(path, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reload(); !errors.Is(err, ErrBadAccountsFile) {
		t.Fatalf("reload of a broken file: %v", err)
	}
	if _, err := a.Check("sam", "pw-sam"); err != nil {
		t.Fatalf("the last good accounts were dropped: %v", err)
	}
}
