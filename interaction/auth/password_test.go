package auth

import (
	"strings"
	"testing"
)

var cheap = HashParams{Memory: 64, Time: 1, Threads: 1}

func TestHashAndVerify(t *testing.T) {
	h, err := HashPassword("correct horse", cheap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("not a PHC argon2id hash: %s", h)
	}
	if !VerifyPassword(h, "correct horse") {
		t.Fatal("the right password does not verify")
	}
	for _, wrong := range []string{"", "correct horsE", "correct horse ", "correct"} {
		if VerifyPassword(h, wrong) {
			t.Fatalf("%q verifies", wrong)
		}
	}
	h2, _ := HashPassword("correct horse", cheap)
	if h2 == h {
		t.Fatal("two hashes of one password are equal: no random salt")
	}
	if _, err := HashPassword("", cheap); err == nil {
		t.Fatal("an empty password was hashed")
	}
	if _, err := HashPassword(strings.Repeat("x", maxPassword+1), cheap); err == nil {
		t.Fatal("an over-long password was hashed")
	}
}

// A password longer than the limit never matches, even one whose first
// maxPassword bytes are the stored password.
func TestVerifyRefusesOverlongPrefix(t *testing.T) {
	pw := strings.Repeat("p", maxPassword)
	h, err := HashPassword(pw, cheap)
	if err != nil {
		t.Fatal(err)
	}
	if !VerifyPassword(h, pw) {
		t.Fatal("the password does not verify")
	}
	if VerifyPassword(h, pw+"x") {
		t.Fatal("a longer password with the same prefix verifies")
	}
}

func TestParseHashBounds(t *testing.T) {
	for _, bad := range []string{
		"", "plain", "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5aw",
		"$argon2id$v=18$m=64,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5aw",
		"$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5aw", // 4 GiB
		"$argon2id$v=19$m=64,t=1000,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5aw",
		"$argon2id$v=19$m=64,t=1,p=0$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5aw",
		"$argon2id$v=19$m=64,t=1,p=1$!!$a2V5a2V5a2V5a2V5a2V5aw",
		"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$",
	} {
		if _, err := parseHash(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

// FuzzParseHash: no input panics, and whatever parses has parameters in
// bounds (a hostile accounts file cannot make a login allocate gigabytes).
func FuzzParseHash(f *testing.F) {
	h, _ := HashPassword("pw", cheap)
	for _, s := range []string{h, "", "$argon2id$", "$argon2id$v=19$m=64,t=1,p=1$$", "$argon2id$v=19$m=1048577,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5aw"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ph, err := parseHash(s)
		if err != nil {
			return
		}
		p := ph.params
		if p.Memory > maxMemoryKiB || p.Time > maxTime || p.Time < 1 || p.Threads < 1 || len(ph.salt) < 8 || len(ph.key) < 16 {
			t.Fatalf("accepted out-of-bounds hash %q: %+v", s, p)
		}
	})
}
