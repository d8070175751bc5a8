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
	if strings.Contains(got, "switchover") || strings.Contains(got, "silent") {
		t.Fatalf("%s has trials that did not run", got)
	}
}
