package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chaos"
	"github.com/hachat/hachat/e2e/harness"
)

// TestChaosTwoMinutes runs `hachat chaos` as a person would, for about two
// minutes with a fixed seed and every kind of fault: it starts its own demo
// on free ports, injects 10 to 20 faults (a fault every 2 to 5 s, each held
// 1 to 3 s), and must exit 0 (no acknowledged message lost, duplicated or
// out of order in any view or in UCS, no epoch with two primaries) with a
// report that counts faults of each kind requested, the plot beside it,
// and no iptables chain of its own left behind.
func TestChaosTwoMinutes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("partitions need root (iptables); CI runs as root")
	}
	bin := harness.Binary(t)
	out := filepath.Join(harness.ArtifactDir(t), "chaos-e2e") // kept: the report, the plot and the demo's logs
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "chaos", "--duration", "90s", "--seed", "3",
		"--faults", "kill,stop,partition,ucs,restart",
		"--gap-min", "2s", "--gap-max", "5s", "--hold-min", "1s", "--hold-max", "3s",
		"--settle", "3s", "--status", "15s", "--json", "--out", out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	t.Logf("hachat chaos took %s; its progress:\n%s", took.Round(time.Second), stderr.String())
	if txt, rerr := os.ReadFile(filepath.Join(out, "chaos-report.txt")); rerr == nil {
		t.Logf("report:\n%s", txt)
	}
	if err != nil {
		t.Fatalf("hachat chaos: %v (want exit 0)", err)
	}
	var rep chaos.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("--json printed no report: %v\n%.500s", err, stdout.String())
	}
	if !rep.OK() || rep.Lost+rep.Duplicated+rep.OutOfOrder+rep.TwoPrimaries != 0 {
		t.Fatalf("exit 0 with violations: %v", rep.Violations)
	}
	if n := len(rep.Faults); n < 10 || n > 25 {
		t.Errorf("%d faults injected, want 10 to 20ish", n)
	}
	for _, k := range chaos.Kinds {
		found := false
		for _, ks := range rep.ByKind {
			if ks.Kind == k {
				found = true
				if ks.Count == 0 {
					t.Errorf("the report counts no %s fault", k)
				}
			}
		}
		if !found {
			t.Errorf("the report has no line for %s", k)
		}
	}
	if rep.Acked < 1000 || rep.ViewsChecked < 4*4 {
		t.Errorf("%d messages acknowledged, %d views checked: the workload did not run", rep.Acked, rep.ViewsChecked)
	}
	if rep.RoleSamples < 100 {
		t.Errorf("only %d role samples", rep.RoleSamples)
	}
	svg, err := os.ReadFile(filepath.Join(out, "chaos-report.svg"))
	if err != nil || !bytes.Contains(svg, []byte(`class="fault fault-`)) {
		t.Errorf("plot missing or without shaded faults: %v", err)
	}
	// This run's chain is named after its pid (another run on the machine
	// has its own).
	chain := chaos.ChainName(cmd.Process.Pid)
	if rules, err := exec.Command("iptables", "-S").CombinedOutput(); err == nil && strings.Contains(string(rules), chain) {
		t.Errorf("this run's iptables chain %s is left:\n%s", chain, rules)
	}
	if took > 160*time.Second {
		t.Errorf("the run took %s: it must stay well under 3 minutes", took)
	}
}
