package jsonenc

import "testing"

// TestReuse: a buffer up to MaxKept comes back empty with its memory, a
// larger one is dropped.
func TestReuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		cap  int
		kept bool
	}{
		{"small", 64, true},
		{"at the limit", MaxKept, true},
		{"past the limit", MaxKept + 1, false},
		{"long message", 1 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append(make([]byte, 0, tc.cap), "abc"...)
			got := Reuse(b)
			switch {
			case !tc.kept && got != nil:
				t.Errorf("Reuse kept a buffer of cap %d (limit %d)", tc.cap, MaxKept)
			case tc.kept && (got == nil || len(got) != 0 || cap(got) != tc.cap):
				t.Errorf("Reuse(cap %d) = len %d cap %d, want the buffer emptied", tc.cap, len(got), cap(got))
			case tc.kept && &got[:1][0] != &b[0]:
				t.Errorf("Reuse(cap %d) returned other memory", tc.cap)
			}
		})
	}
}
