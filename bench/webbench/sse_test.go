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
