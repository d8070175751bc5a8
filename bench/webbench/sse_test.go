package webbench

import (
	"os"
	"strings"
	"testing"
)

func TestReadSSE(t *testing.T) {
	in := "retry: 1000\n\n: comment\nid: 3\ndata: {\"a\":1}\n\nevent: heartbeat\ndata: x\ndata: y\n\n" +
		"data: " + strings.Repeat("z", 10000) + "\r\n\r\n"
	var got []string
	if err := readSSE(strings.NewReader(in), func(ev sseEvent) {
		got = append(got, string(ev.ID)+"|"+string(ev.Event)+"|"+string(ev.Data))
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{`3||{"a":1}`, "|heartbeat|x\ny", "||" + strings.Repeat("z", 10000)}
	if len(got) != len(want) {
		t.Fatalf("got %d events %q", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d: %.60q, want %.60q", i, got[i], want[i])
		}
	}
}

func TestProcessCPU(t *testing.T) {
	if _, err := processCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestBenchMessageID(t *testing.T) {
	for _, tc := range []struct {
		data, want string
		ok         bool
	}{
		{`{"index":3,"type":"Message","clientMessageId":"w42","from":{}}`, "w42", true},
		{`{"chatId":"c","clientMessageId":"w7"}`, "w7", true},
		{`{"clientMessageId":"webapi-00ff"}`, "webapi-00ff", true}, // found; messageNumber refuses it
		{`{"clientMessageId":"x1"}`, "", false},
		{`{"clientMessageId":"w"}`, "", false},
		{`{"clientMessageId":"w12`, "", false},
		{`{"type":"Message"}`, "", false},
	} {
		got, ok := benchMessageID([]byte(tc.data))
		if ok != tc.ok || string(got) != tc.want {
			t.Errorf("benchMessageID(%s) = %q, %v; want %q, %v", tc.data, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseIndex(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"1", 1, true}, {"18446744073709551", 18446744073709551, true}, {"", 0, false},
		{"-1", 0, false}, {"1a", 0, false}, {"12345678901234567890", 0, false},
	} {
		got, ok := parseIndex([]byte(tc.in))
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseIndex(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
