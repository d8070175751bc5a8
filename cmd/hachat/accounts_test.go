package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/interaction/auth"
)

func TestAccountsCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "accounts.json")
	cmd := func(stdin string, args ...string) (string, string, error) {
		var out, errw bytes.Buffer
		err := accountsCmd(args, strings.NewReader(stdin), &out, &errw)
		return out.String(), errw.String(), err
	}
	if _, _, err := cmd("s3cret passphrase\n", "add", "--file", file, "--id", "ada", "--role", "agent", "--nickname", "Ada"); err != nil {
		t.Fatal(err)
	}
	pw, _, err := cmd("", "add", "--file", file, "--id", "sam", "--role", "supervisor", "--generate")
	if err != nil {
		t.Fatal(err)
	}
	pw = strings.TrimSpace(pw)
	if len(pw) < 20 {
		t.Fatalf("generated password %q is short", pw)
	}
	if _, _, err := cmd("x\n", "add", "--file", file, "--id", "ada", "--role", "agent"); !errors.Is(err, auth.ErrAccountExists) {
		t.Fatalf("second add: %v", err)
	}
	if _, _, err := cmd("x\n", "add", "--file", file, "--id", "eve", "--role", "root"); err == nil {
		t.Fatal("added an account with role root")
	}
	if _, _, err := cmd("", "add", "--file", file, "--id", "eve", "--role", "agent"); err == nil {
		t.Fatal("added an account without a password")
	}
	list, _, err := cmd("", "list", "--file", file)
	if err != nil || !strings.Contains(list, "ada  agent       Ada") || !strings.Contains(list, "sam  supervisor") || strings.Contains(list, "argon2") {
		t.Fatalf("list: %v\n%s", err, list)
	}
	acc, err := auth.OpenAccounts(file)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := acc.Check("ada", "s3cret passphrase"); err != nil || id.Role != "agent" {
		t.Fatalf("ada's password from stdin: %+v %v", id, err)
	}
	if id, err := acc.Check("sam", pw); err != nil || id.Role != "supervisor" {
		t.Fatalf("sam's generated password: %+v %v", id, err)
	}
	if _, _, err := cmd("", "remove", "--file", file, "--id", "ada"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cmd("", "remove", "--file", file, "--id", "ada"); !errors.Is(err, auth.ErrNoAccount) {
		t.Fatalf("second remove: %v", err)
	}
	var out, errw bytes.Buffer
	if code := run([]string{"accounts", "frobnicate"}, &out, &errw); code != 2 {
		t.Fatalf("unknown verb: exit %d", code)
	}
}
