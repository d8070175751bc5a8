package prometheus

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool returns the path of Debian's promtool (make deps installs the
// prometheus package); the test fails without it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run `make deps` (apt package prometheus)")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	return string(out), err
}

func TestCheckRules(t *testing.T) {
	out, err := runPromtool(t, "check", "rules", "rules.yaml")
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))
}

// TestRulesUnit runs rules_test.yaml: every alert firing and not firing.
func TestRulesUnit(t *testing.T) {
	out, err := runPromtool(t, "test", "rules", "rules_test.yaml")
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Record string `json:"record"`
			Alert  string `json:"alert"`
			Expr   string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile("rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	return rf
}

// TestEveryAlertTestedBothWays: each alert of rules.yaml has, in
// rules_test.yaml, a case where it fires and one where it does not.
func TestEveryAlertTestedBothWays(t *testing.T) {
	b, err := os.ReadFile("rules_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string            `json:"alertname"`
				ExpAlerts []json.RawMessage `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: tested firing %v, not firing %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
	for _, want := range []string{"HachatNoPrimary", "HachatTwoPrimaries", "HachatReplicationLag", "HachatTranscriptBreakerOpen",
		"HachatTranscriptSavesFailing", "HachatSidecarNoUpstream", "HachatControlPlaneUnreachable"} {
		if !fires[want] {
			t.Errorf("no firing test of %s", want)
		}
	}
	if alerts < 7 {
		t.Errorf("%d alerts, want at least 7", alerts)
	}
}

var (
	// metricInExpr finds hachat metric and recording rule names in PromQL.
	metricInExpr = regexp.MustCompile(`\bhachat[_:][a-zA-Z0-9_:]+`)
	// metricInCode finds metric names the Go code registers (string
	// literals; the HELP/TYPE lines promtool check metrics sees come from them).
	metricInCode = regexp.MustCompile(`"(hachat_[a-z0-9_]+)"`)
)

// exportedMetrics returns the hachat_* names in the hachat module's
// non-test Go files.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	root := filepath.Join("..", "..")
	names := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "deploy" || d.Name() == "bench" || d.Name() == "e2e" || strings.HasPrefix(d.Name(), ".")) && p != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range metricInCode.FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !names["hachat_core_role"] || len(names) < 50 {
		t.Fatalf("found %d metric names in the code; the scan is broken", len(names))
	}
	return names
}

// knownName reports whether name is exported by the code (a histogram's
// _bucket, _sum and _count series included) or recorded by rules.
func knownName(name string, exported, recorded map[string]bool) bool {
	if strings.Contains(name, ":") {
		return recorded[name]
	}
	if exported[name] {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && exported[base] {
			return true
		}
	}
	return false
}

func recordedNames(rf ruleFile) map[string]bool {
	out := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out[r.Record] = true
			}
		}
	}
	return out
}

// TestRulesUseExportedMetrics: every hachat_* name in rules.yaml is one the
// code exports (a typo would make an alert that never fires).
func TestRulesUseExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	rf := readRules(t)
	recorded := recordedNames(rf)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			for _, n := range metricInExpr.FindAllString(r.Expr, -1) {
				if !knownName(n, exported, recorded) {
					t.Errorf("rule %s%s: %s is no metric the code exports", r.Record, r.Alert, n)
				}
			}
		}
	}
	if knownName("hachat_core_rol", exported, recorded) || knownName("hachat:nope", exported, recorded) {
		t.Fatal("knownName accepts unknown names")
	}
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		ID      int    `json:"id"`
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// loadDashboard reads dashboard.json strictly enough to find its panels.
func loadDashboard(path string) (dashboard, error) {
	var d dashboard
	b, err := os.ReadFile(path)
	if err != nil {
		return d, err
	}
	err = json.Unmarshal(b, &d)
	return d, err
}

// concrete returns expr with Grafana's interval variables replaced.
func concrete(expr string) string {
	for k, v := range GrafanaVariables {
		expr = strings.ReplaceAll(expr, k, v)
	}
	return expr
}

// checkExprs writes exprs as recording rules of a scratch rule file and
// runs promtool check rules on it: promtool parses each expression with
// Prometheus's own PromQL parser.
func checkExprs(t *testing.T, exprs []string) (string, error) {
	t.Helper()
	var rf struct {
		Groups []map[string]any `json:"groups"`
	}
	var rules []map[string]string
	for i, e := range exprs {
		rules = append(rules, map[string]string{"record": "dashboard:panel_" + string(rune('a'+i%26)) + "_" + strings.Repeat("x", i/26), "expr": e})
	}
	rf.Groups = append(rf.Groups, map[string]any{"name": "dashboard", "rules": rules})
	b, err := yaml.Marshal(rf)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return runPromtool(t, "check", "rules", p)
}

// TestDashboard: the dashboard loads, has the panels the issue names
// (roles and epochs, failovers, messages/s, p99, saves, breaker state),
// every query parses (promtool) and names metrics the code exports.
func TestDashboard(t *testing.T) {
	d, err := loadDashboard("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without uid or panels: %+v", d)
	}
	var titles []string
	var exprs []string
	exported := exportedMetrics(t)
	recorded := recordedNames(readRules(t))
	for _, p := range d.Panels {
		titles = append(titles, strings.ToLower(p.Title))
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := metricInExpr.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q query %s names no hachat metric: %s", p.Title, tg.RefID, tg.Expr)
			}
			for _, n := range names {
				if !knownName(n, exported, recorded) {
					t.Errorf("panel %q query %s: %s is no metric the code exports", p.Title, tg.RefID, n)
				}
			}
			exprs = append(exprs, concrete(tg.Expr))
		}
	}
	for _, want := range []string{"role", "epoch", "failover", "messages", "p99", "saves", "breaker"} {
		if !slices.ContainsFunc(titles, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no panel about %q (panels: %v)", want, titles)
		}
	}
	if out, err := checkExprs(t, exprs); err != nil {
		t.Fatalf("a dashboard query does not parse: %v\n%s", err, out)
	}
}

// TestCheckExprsCatchesBadPromQL: the promtool check the dashboard test
// relies on fails on a query that does not parse.
func TestCheckExprsCatchesBadPromQL(t *testing.T) {
	if out, err := checkExprs(t, []string{"sum by (pair (hachat_core_role)"}); err == nil {
		t.Fatalf("promtool accepted a broken query:\n%s", out)
	}
	if out, err := checkExprs(t, []string{"rate(hachat_core_events_total[$__rate_interval])"}); err == nil {
		t.Fatalf("promtool accepted a Grafana variable:\n%s", out)
	}
}
