//go:build docker

package docker

import (
	"strings"
	"testing"
	"time"
)

// The partition test's pure parts: its plan from the environment and its
// reading of the /status timeline. They need no Docker engine.

func TestPartitionPlan(t *testing.T) {
	tests := []struct {
		runs, cut string
		wantRuns  int
		wantCut   time.Duration
		wantErr   string
	}{
		{"", "", 1, shortCut, ""},
		{"5", "", 5, fullCut, ""},
		{"5", "20s", 5, 20 * time.Second, ""},
		{"", "3s", 1, 3 * time.Second, ""},
		{"0", "", 0, 0, "HACHAT_PARTITION_RUNS"},
		{"many", "", 0, 0, "HACHAT_PARTITION_RUNS"},
		{"", "15", 0, 0, "HACHAT_PARTITION_CUT"},
		{"", "-1s", 0, 0, "HACHAT_PARTITION_CUT"},
	}
	for _, tt := range tests {
		runs, cut, err := partitionPlan(tt.runs, tt.cut)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("partitionPlan(%q, %q) = %v, want an error about %s", tt.runs, tt.cut, err, tt.wantErr)
			}
			continue
		}
		if err != nil || runs != tt.wantRuns || cut != tt.wantCut {
			t.Errorf("partitionPlan(%q, %q) = %d, %v, %v; want %d, %v", tt.runs, tt.cut, runs, cut, err, tt.wantRuns, tt.wantCut)
		}
	}
}

func TestCheckRoles(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	cutAt, healAt := t0.Add(time.Second), t0.Add(9*time.Second)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ans := func(ms int, core, role string, epoch uint64) statusSample {
		return statusSample{At: at(ms), Core: core, State: &coreState{Name: core, Role: role, Epoch: epoch}}
	}
	silent := func(ms int, core string) statusSample { return statusSample{At: at(ms), Core: core, Err: "timeout"} }
	backupCut := partitionCase{cut: "core-b", failover: false}
	primaryCut := partitionCase{cut: "core-a", failover: true}
	healthy := []statusSample{ans(0, "core-a", "primary", 1), ans(0, "core-b", "backup", 1),
		ans(2000, "core-a", "primary", 1), silent(2000, "core-b"), ans(9500, "core-b", "backup", 1)}
	failover := []statusSample{ans(0, "core-a", "primary", 1), ans(0, "core-b", "backup", 1), silent(1500, "core-a"),
		ans(1800, "core-b", "primary", 2), ans(9200, "core-a", "primary", 1), ans(9300, "core-a", "backup", 2), ans(9300, "core-b", "primary", 2)}
	tests := []struct {
		name    string
		tc      partitionCase
		samples []statusSample
		want    []string // substrings, one per expected error
		both    time.Duration
	}{
		{"backup cut, roles kept", backupCut, healthy, nil, 0},
		{"backup cut, deposes the primary", backupCut, append(append([]statusSample{}, healthy...),
			ans(9800, "core-b", "primary", 2), ans(9900, "core-a", "backup", 1), ans(10000, "core-a", "backup", 2)),
			[]string{"core-b (the cut-off backup) answered primary at epoch 2, 800ms after the heal",
				"core-a (the healthy primary) answered backup at epoch 1, 900ms after the heal"}, 100 * time.Millisecond},
		{"backup cut, primary's epoch moves", backupCut, append(append([]statusSample{}, healthy...), ans(9600, "core-a", "primary", 2)),
			[]string{"core-a (the healthy primary) changed epoch"}, 0},
		{"primary cut, clean failover", primaryCut, failover, nil, 100 * time.Millisecond},
		{"primary cut, two primaries at one epoch", primaryCut, append(append([]statusSample{}, failover[:4]...),
			ans(1850, "core-a", "primary", 2)), []string{"core-a answered primary at the same epoch as core-b"}, 0},
		{"primary cut, promotion without an epoch", primaryCut, []statusSample{ans(0, "core-a", "primary", 1), ans(1800, "core-b", "primary", 1)},
			[]string{"core-b answered primary without a newer epoch"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := checkRoles(tt.samples, tt.tc, 1, cutAt, healAt)
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors %v, want %d %v", len(errs), errs, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %v, want it to mention %q", i, errs[i], w)
				}
			}
			if got := bothPrimary(tt.samples); got != tt.both {
				t.Errorf("bothPrimary = %v, want %v", got, tt.both)
			}
		})
	}
}
