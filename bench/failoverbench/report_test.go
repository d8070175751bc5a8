package failoverbench

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestReportJSON(t *testing.T) {
	b, err := json.Marshal(Report{Kill: []time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{`"kill":{"gaps_ns":[3000000,1000000,2000000],"p50_ns":2000000`, `"max_ns":3000000`} {
		if !strings.Contains(got, want) {
			t.Fatalf("%s lacks %s", got, want)
		}
	}
	if strings.Contains(got, "switchover") || strings.Contains(got, "silent") || strings.Contains(got, "kill_ack") {
		t.Fatalf("%s has trials that did not run", got)
	}
}

// TestReportKillAck: the send side of the kill -9 gaps is its own summary.
func TestReportKillAck(t *testing.T) {
	r := Report{Kill: []time.Duration{5 * time.Millisecond}, KillAck: []time.Duration{2 * time.Millisecond}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"kill_ack":{"gaps_ns":[2000000],"p50_ns":2000000`; !strings.Contains(string(b), want) {
		t.Fatalf("%s lacks %s", b, want)
	}
	if want := "of which to the ack"; !strings.Contains(r.String(), want) {
		t.Fatalf("%q lacks %q", r.String(), want)
	}
}

// TestLongestPause: the longest interval between consecutive deliveries,
// counted from the last one before the fault.
func TestLongestPause(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		start time.Time
		ts    []time.Time
		want  time.Duration
	}{
		{"pause after deliveries the old primary still made", t0, at(2, 4, 6, 40, 42), 34 * time.Millisecond},
		{"pause right at the fault", t0, at(25, 27), 25 * time.Millisecond},
		{"no delivery before the fault", time.Time{}, at(5, 9, 30), 21 * time.Millisecond},
		{"one time alone", time.Time{}, at(5), 0},
		{"nothing", time.Time{}, nil, 0},
	} {
		if got := longestPause(tc.start, tc.ts); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
