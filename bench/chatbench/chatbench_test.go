package chatbench

import "testing"

func TestMessageNumber(t *testing.T) {
	for _, tc := range []struct {
		id   string
		n    int
		want int
		ok   bool
	}{
		{messageID(0), 10, 0, true},
		{messageID(9), 10, 9, true},
		{messageID(10), 10, 0, false}, // not this run's
		{"b-1", 10, 0, false},
		{"b", 10, 0, false},
		{"bx", 10, 0, false},
		{"c3", 10, 0, false},
		{"", 10, 0, false},
		{"3", 10, 0, false},
	} {
		got, ok := messageNumber(tc.id, tc.n)
		if got != tc.want || ok != tc.ok {
			t.Errorf("messageNumber(%q, %d) = %d, %v; want %d, %v", tc.id, tc.n, got, ok, tc.want, tc.ok)
		}
	}
}
