package pairs

import (
	"errors"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, ok := range []string{"1", "2", "eu1", "abcdefghij012345"} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "A", "p-2", "2.1", "abcdefghij0123456", "é"} {
		if err := Validate(bad); !errors.Is(err, ErrBadName) {
			t.Errorf("Validate(%q) = %v, want ErrBadName", bad, err)
		}
	}
}

func TestChatIDNamesItsPair(t *testing.T) {
	cases := []struct{ pair, raw, id, of string }{
		{"", "abc", "abc", "1"},
		{"1", "abc", "abc", "1"},
		{"2", "abc", "2.abc", "2"},
		{"eu1", "f00", "eu1.f00", "eu1"},
	}
	for _, c := range cases {
		id := ChatID(c.pair, c.raw)
		if id != c.id || Of(id) != c.of {
			t.Errorf("ChatID(%q,%q) = %q (pair %q), want %q (pair %q)", c.pair, c.raw, id, Of(id), c.id, c.of)
		}
	}
	// Ids that name no valid pair belong to the default pair.
	for _, id := range []string{"", "abc", "X.abc", ".abc", "a-b.c"} {
		if Of(id) != Default {
			t.Errorf("Of(%q) = %q, want %q", id, Of(id), Default)
		}
	}
}

func TestService(t *testing.T) {
	if got := Service("hachat", ""); got != "hachat" {
		t.Errorf("default pair service = %q", got)
	}
	if got := Service("hachat", "1"); got != "hachat" {
		t.Errorf("pair 1 service = %q", got)
	}
	if got := Service("hachat", "2"); got != "hachat-2" {
		t.Errorf("pair 2 service = %q", got)
	}
}
