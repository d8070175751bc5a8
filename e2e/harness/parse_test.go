package harness

import (
	"strings"
	"testing"
)

func TestParseSSE(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []SSEEvent
	}{
		{"message", "id: 3\ndata: {\"a\":1}\n\n", []SSEEvent{{ID: "3", Data: `{"a":1}`}}},
		{"named", "event: reconnecting\ndata: x\n\n", []SSEEvent{{Event: "reconnecting", Data: "x"}}},
		{"multi-line data", "data: a\ndata: b\n\n", []SSEEvent{{Data: "a\nb"}}},
		{"comments and retry skipped", ": ping\n\nretry: 1000\n\ndata: y\n\n", []SSEEvent{{Data: "y"}}},
		{"CRLF", "event: e\r\ndata: z\r\n\r\n", []SSEEvent{{Event: "e", Data: "z"}}},
		{"incomplete last event dropped", "data: a\n\ndata: b\n", []SSEEvent{{Data: "a"}}},
		{"no space after colon", "data:q\n\n", []SSEEvent{{Data: "q"}}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []SSEEvent
			if err := ParseSSE(strings.NewReader(tt.in), func(ev SSEEvent) bool { got = append(got, ev); return true }); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("event %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParseSSE(f *testing.F) {
	for _, s := range []string{"id: 1\ndata: x\n\n", "event: a\n\n", ": c\n\n", "data\n\n", "data: a\ndata: b\n\n\n\n", "\r\n\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		n := 0
		stopAt := 3
		err := ParseSSE(strings.NewReader(in), func(ev SSEEvent) bool {
			n++
			if strings.Contains(ev.Event, "\n") || strings.Contains(ev.ID, "\n") {
				t.Fatalf("a field holds a newline: %+v", ev)
			}
			return n < stopAt
		})
		if err != nil {
			t.Fatalf("ParseSSE(%q): %v", in, err)
		}
		if n > stopAt {
			t.Fatalf("emit called %d times after it asked to stop", n)
		}
		if blank := strings.Count(strings.ReplaceAll(in, "\r", ""), "\n\n"); n > blank+1 {
			t.Fatalf("%d events from %d blank lines", n, blank)
		}
	})
}

func FuzzSumMetric(f *testing.F) {
	f.Add("x_total{a=\"b\"} 3\n# HELP x\nx_total 1.5e3\n", "x_total", `a="b"`)
	f.Add("y NaN\ny +Inf\n", "y", "")
	f.Add("z{", "z", "")
	f.Fuzz(func(t *testing.T, text, name, label string) {
		v, ok := SumMetric(text, name, label)
		if !ok && v != 0 {
			t.Fatalf("no sample matched but the sum is %v", v)
		}
	})
}
