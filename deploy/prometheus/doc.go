// Package prometheus holds hachat's Prometheus rules (rules.yaml, unit
// tests in rules_test.yaml) and Grafana dashboard (dashboard.json), and the
// tests that check them: promtool check and test rules, every panel's
// PromQL parsed by promtool, every metric name one the code exports.
// The end-to-end test (e2e/prometheus_test.go) loads the same files into a
// real Prometheus scraping a running cluster.
package prometheus

// Grafana's interval variables, replaced by a concrete range before an
// expression is checked or queried outside Grafana.
var GrafanaVariables = map[string]string{
	"$__rate_interval": "1m",
	"$__interval":      "15s",
	"$__range":         "1h",
}
