// Package jsonenc appends JSON strings exactly as encoding/json writes
// them, for the hand-written encoders of the hot paths (an answer to every
// customer send, an event on every push channel), where json.Marshal's
// reflection and allocations cost more than the work around them. Byte for
// byte the same output is the contract: HTML-sensitive characters (<, >, &)
// escaped as \u003c, \u003e, \u0026, control characters as \n, \t and the
// like or \u00XX, U+2028 and U+2029 escaped, and invalid UTF-8 replaced by
// \ufffd.
package jsonenc

import (
	"reflect"
	"strings"
	"unicode/utf8"
)

const hex = "0123456789abcdef"

// safe reports the ASCII bytes written as they are (encoding/json's
// htmlSafeSet): printable, and not ", \, <, > or &.
var safe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		switch b {
		case '"', '\\', '<', '>', '&':
		default:
			t[b] = true
		}
	}
	return t
}()

// AppendString appends s to dst as a quoted JSON string, as json.Marshal
// writes it.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if safe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default: // other controls, and <, > and &
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// FieldTags returns the json tags of the fields of v's struct type, in
// order and separated by spaces. Tests of a hand-written encoder pin it, so
// that a field added to (or renamed in) the struct fails them until the
// encoder writes it too.
func FieldTags(v any) string {
	typ := reflect.TypeOf(v)
	tags := make([]string, 0, typ.NumField())
	for i := range typ.NumField() {
		tags = append(tags, typ.Field(i).Tag.Get("json"))
	}
	return strings.Join(tags, " ")
}
