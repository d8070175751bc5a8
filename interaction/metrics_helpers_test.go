package interaction

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// testMetric returns the value of the unlabelled metric name.
func testMetric(t *testing.T, e *env, name string, value func(*dto.Metric) float64) float64 {
	t.Helper()
	mfs, err := e.srv.tel.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return value(mf.GetMetric()[0])
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func testCounter(t *testing.T, e *env, name string) float64 {
	return testMetric(t, e, name, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

func testGauge(t *testing.T, e *env, name string) float64 {
	return testMetric(t, e, name, func(m *dto.Metric) float64 { return m.GetGauge().GetValue() })
}
