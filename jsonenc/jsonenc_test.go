package jsonenc

import (
	"encoding/json"
	"strings"
	"testing"
)

// cases are strings whose every byte class matters: plain text, the
// escaped ASCII (quotes, backslash, controls, HTML characters), multi-byte
// UTF-8, U+2028/U+2029, and invalid UTF-8 (a stray continuation byte, a
// truncated sequence, an overlong encoding, a surrogate).
var cases = []string{
	"", "hello", `say "hi" \ bye`, "a\nb\tc\rd\be\ff", "\x00\x01\x1f\x7f",
	"<script>&amp;</script>", "héllo wörld ✓ 𝄞", "line\u2028sep\u2029par",
	"\x80", "ab\xc3", "\xc0\xaf", "\xed\xa0\x80", "ok\xffok", strings.Repeat("x", 300) + "<",
}

// TestAppendString checks the output against json.Marshal's, byte for byte.
func TestAppendString(t *testing.T) {
	for _, s := range cases {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendString([]byte("x"), s); string(got) != "x"+string(want) {
			t.Errorf("AppendString(%q) = %s, want %s", s, got[1:], want)
		}
	}
}

// FuzzAppendString checks any string against json.Marshal.
func FuzzAppendString(f *testing.F) {
	for _, s := range cases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := AppendString(nil, s); string(got) != string(want) {
			t.Errorf("AppendString(%q) = %s, want %s", s, got, want)
		}
	})
}

// TestFieldTags: the json tags of a struct's fields, in order, an untagged
// field as an empty tag.
func TestFieldTags(t *testing.T) {
	type s struct {
		A int    `json:"a"`
		B string `json:"b,omitempty"`
		C bool
	}
	if got, want := FieldTags(s{}), "a b,omitempty "; got != want {
		t.Errorf("FieldTags = %q, want %q", got, want)
	}
}
