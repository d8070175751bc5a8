package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/mtls"
)

// TestPrometheus runs Debian's Prometheus (make deps installs it) against a
// mesh cluster with mTLS, with deploy/prometheus/rules.yaml loaded, and
// checks through its HTTP API what an operator would: every part scraped
// (the cores' plain /metrics, the mTLS /metrics of ucs, the control plane
// and the sidecars with the operator certificate), one core primary and one
// backup, every rule evaluating without error, every query of the Grafana
// dashboard answering; then, after kill -9 of the primary, the other core
// primary at a higher epoch, the dead one down and HachatCoreDown pending.
func TestPrometheus(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: run `make deps` (apt package prometheus)")
	}
	c := harness.StartCluster(t, harness.Options{Stage: demo.StageMesh, TLS: true})
	c.WaitRole("core-a", "primary", 15*time.Second)
	c.WaitRole("core-b", "backup", 15*time.Second)

	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join("..", "deploy", "prometheus", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, targets := prometheusConfig(c.Plan(), c.Layout().CertDir, rules)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, bin, cfgPath, filepath.Join(dir, "data"))

	// Every part's /metrics scraped, TLS or not.
	harness.Eventually(t, "every target up", 30*time.Second, func() error {
		up, err := prom.vector(`up`)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, s := range up {
			if s.value != 1 {
				return fmt.Errorf("%s is down (%s)", s.metric["instance"], prom.targetError(s.metric["instance"]))
			}
			seen[s.metric["instance"]] = true
		}
		for _, want := range targets {
			if !seen[want] {
				return fmt.Errorf("%s not scraped yet (up: %d targets)", want, len(up))
			}
		}
		return nil
	})

	// One primary, one backup.
	harness.Eventually(t, "core-a primary and core-b backup in Prometheus", 15*time.Second, func() error {
		return prom.expectInstances(`hachat_core_role{role="primary"} == 1`, "core-a", `hachat_core_role{role="backup"} == 1`, "core-b")
	})
	epochA := prom.scalar(t, `hachat_core_epoch{instance="core-a"}`)
	if epochA < 1 {
		t.Fatalf("core-a epoch %v", epochA)
	}
	harness.Eventually(t, "recording rule hachat:core_primaries:sum is 1", 15*time.Second, func() error {
		v, err := prom.vector(`hachat:core_primaries:sum{pair="pair-1"}`)
		if err != nil {
			return err
		}
		if len(v) != 1 || v[0].value != 1 {
			return fmt.Errorf("got %v", v)
		}
		return nil
	})

	// Every rule evaluates against the real metrics without error, and no
	// alert is pending or firing on a healthy cluster.
	harness.Eventually(t, "every rule evaluated, healthy", 20*time.Second, func() error {
		return prom.rulesHealthy()
	})
	if alerts, err := prom.vector(`ALERTS`); err != nil || len(alerts) != 0 {
		t.Fatalf("alerts on a healthy cluster: %v %v", alerts, err)
	}

	// Every query of the dashboard answers without error.
	queries := dashboardQueries(t)
	for _, q := range queries {
		if _, err := prom.query(q); err != nil {
			t.Errorf("dashboard query %s: %v", q, err)
		}
	}
	// ... and a broken one would not: the check can fail.
	if _, err := prom.query(`sum by (pair (hachat_core_role)`); err == nil {
		t.Fatal("Prometheus accepted a broken query")
	}

	killed := time.Now()
	c.Kill("core-a", syscall.SIGKILL)
	harness.Eventually(t, "core-b primary at a higher epoch in Prometheus, core-a down", 30*time.Second, func() error {
		if err := prom.expectInstances(`hachat_core_role{role="primary"} == 1`, "core-b", `hachat_core_role{role="backup"} == 1`, ""); err != nil {
			return err
		}
		eb, err := prom.vector(`hachat_core_epoch{instance="core-b"}`)
		if err != nil {
			return err
		}
		if len(eb) != 1 || eb[0].value <= epochA {
			return fmt.Errorf("core-b epoch %v, want above core-a's %v", eb, epochA)
		}
		down, err := prom.vector(`up{instance="core-a"} == 0`)
		if err != nil {
			return err
		}
		if len(down) != 1 {
			return fmt.Errorf("core-a not down yet in Prometheus")
		}
		return nil
	})
	seen := time.Since(killed)
	harness.Eventually(t, "HachatCoreDown pending for core-a", 20*time.Second, func() error {
		v, err := prom.vector(`ALERTS{alertname="HachatCoreDown",instance="core-a",pair="pair-1"}`)
		if err != nil {
			return err
		}
		if len(v) != 1 {
			return fmt.Errorf("ALERTS: %v", v)
		}
		return nil
	})
	t.Logf("%d targets scraped, %d dashboard queries answered; Prometheus saw core-a primary at epoch %v, and core-b primary at a higher epoch %v after the kill",
		len(targets), len(queries), epochA, seen.Round(time.Millisecond))
}

// prometheusConfig writes the scrape configuration of plan: the cores with
// pair="pair-1" (as the ServiceMonitor labels them), the parts that serve
// /metrics over mTLS with the operator's certificate from certDir, the
// others plain; every target's instance label is its part name. It returns
// the instances.
func prometheusConfig(plan demo.Plan, certDir, rules string) ([]byte, []string) {
	type static struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels"`
	}
	type job struct {
		JobName       string            `yaml:"job_name"`
		Scheme        string            `yaml:"scheme"`
		TLSConfig     map[string]string `yaml:"tls_config,omitempty"`
		StaticConfigs []static          `yaml:"static_configs"`
	}
	op := mtls.FilesIn(certDir, demo.OperatorName)
	jobs := map[string]*job{
		"hachat-core":  {JobName: "hachat-core", Scheme: "http"},
		"hachat-plain": {JobName: "hachat-plain", Scheme: "http"},
		"hachat-mtls": {JobName: "hachat-mtls", Scheme: "https",
			TLSConfig: map[string]string{"ca_file": op.CA, "cert_file": op.Cert, "key_file": op.Key}},
	}
	var instances []string
	for _, p := range plan.Parts {
		if p.HTTP == "" {
			continue
		}
		labels := map[string]string{"instance": p.Name}
		j := jobs["hachat-plain"]
		switch {
		case p.Kind == demo.KindCore:
			j = jobs["hachat-core"]
			labels["pair"] = "pair-1"
		case p.TLS:
			j = jobs["hachat-mtls"]
		}
		j.StaticConfigs = append(j.StaticConfigs, static{Targets: []string{p.HTTP}, Labels: labels})
		instances = append(instances, p.Name)
	}
	cfg := map[string]any{
		"global":         map[string]string{"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
		"rule_files":     []string{rules},
		"scrape_configs": []*job{jobs["hachat-core"], jobs["hachat-plain"], jobs["hachat-mtls"]},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		panic(err) // maps of strings always marshal
	}
	return b, instances
}

// promServer is a running Prometheus and a client of its HTTP API.
type promServer struct {
	base string
	hc   *http.Client
}

// startPrometheus starts Prometheus on a free loopback port with its
// storage in dataDir, waits until it is ready and stops it when the test
// ends.
func startPrometheus(t *testing.T, bin, cfgPath, dataDir string) *promServer {
	t.Helper()
	addr, err := demo.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(filepath.Dir(cfgPath), "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+dataDir,
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("prometheus log:\n%s", b)
		}
	})
	p := &promServer{base: "http://" + addr, hc: &http.Client{Timeout: 5 * time.Second}}
	harness.Eventually(t, "prometheus ready", 30*time.Second, func() error {
		select {
		case err := <-done:
			done <- err
			b, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited before it was ready: %v\n%s", err, b)
		default:
		}
		resp, err := p.hc.Get(p.base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})
	return p
}

// sample is one series of an instant vector.
type sample struct {
	metric map[string]string
	value  float64
}

func (s sample) String() string { return fmt.Sprintf("%v=%v", s.metric, s.value) }

// get calls the API and returns its data; an answer other than "success"
// is an error with Prometheus's reason.
func (p *promServer) get(path string, params url.Values) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+params.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var out struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s %s: %s: %w", path, resp.Status, b, err)
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", path, out.ErrorType, out.Error)
	}
	return out.Data, nil
}

// query runs an instant query and returns its result type.
func (p *promServer) query(q string) (string, error) {
	data, err := p.get("/api/v1/query", url.Values{"query": {q}})
	if err != nil {
		return "", err
	}
	var d struct {
		ResultType string `json:"resultType"`
	}
	err = json.Unmarshal(data, &d)
	return d.ResultType, err
}

// vector runs an instant query that returns a vector.
func (p *promServer) vector(q string) ([]sample, error) {
	data, err := p.get("/api/v1/query", url.Values{"query": {q}})
	if err != nil {
		return nil, err
	}
	var d struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("%s: result type %s, want vector", q, d.ResultType)
	}
	var out []sample
	for _, r := range d.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: value %v: %w", q, r.Value, err)
		}
		out = append(out, sample{metric: r.Metric, value: v})
	}
	return out, nil
}

// scalar returns the value of a query that must return one series.
func (p *promServer) scalar(t *testing.T, q string) float64 {
	t.Helper()
	v, err := p.vector(q)
	if err != nil || len(v) != 1 {
		t.Fatalf("%s: %v %v", q, v, err)
	}
	return v[0].value
}

// expectInstances checks that q1 returns exactly the series of instance
// want1 and q2 exactly that of want2 ("" : none).
func (p *promServer) expectInstances(q1, want1, q2, want2 string) error {
	for _, c := range []struct{ q, want string }{{q1, want1}, {q2, want2}} {
		v, err := p.vector(c.q)
		if err != nil {
			return err
		}
		var got []string
		for _, s := range v {
			got = append(got, s.metric["instance"])
		}
		sort.Strings(got)
		want := []string{}
		if c.want != "" {
			want = []string{c.want}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("%s: instances %v, want %v", c.q, got, want)
		}
	}
	return nil
}

// targetError returns the last scrape error of instance (for messages).
func (p *promServer) targetError(instance string) string {
	data, err := p.get("/api/v1/targets", url.Values{})
	if err != nil {
		return err.Error()
	}
	var d struct {
		ActiveTargets []struct {
			Labels    map[string]string `json:"labels"`
			LastError string            `json:"lastError"`
		} `json:"activeTargets"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return err.Error()
	}
	for _, tg := range d.ActiveTargets {
		if tg.Labels["instance"] == instance {
			return tg.LastError
		}
	}
	return "no such target"
}

// rulesHealthy checks that every rule of every group has been evaluated
// and is healthy (an expression Prometheus cannot evaluate says "err").
func (p *promServer) rulesHealthy() error {
	data, err := p.get("/api/v1/rules", url.Values{})
	if err != nil {
		return err
	}
	var d struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return err
	}
	n := 0
	for _, g := range d.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health == "err" {
				return fmt.Errorf("rule %s/%s: %s", g.Name, r.Name, r.LastError)
			}
			if r.Health != "ok" {
				return fmt.Errorf("rule %s/%s: health %q", g.Name, r.Name, r.Health)
			}
		}
	}
	if n < 10 {
		return fmt.Errorf("%d rules loaded", n)
	}
	return nil
}

// dashboardQueries returns the PromQL of every panel of the Grafana
// dashboard, with Grafana's interval variables replaced.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h")
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, r.Replace(tg.Expr))
		}
	}
	if len(out) == 0 {
		t.Fatal("dashboard has no queries")
	}
	return out
}
