package harness

import "testing"

func TestSumMetric(t *testing.T) {
	text := `# HELP x_total x
x_total{outcome="ok"} 3
x_total{outcome="retry",kind="a"} 2
x_total{outcome="retry",kind="b"} 1.5
y 7
`
	if v, ok := SumMetric(text, "x_total", `outcome="retry"`); !ok || v != 3.5 {
		t.Fatalf("retry sum = %v %v", v, ok)
	}
	if v, ok := SumMetric(text, "y"); !ok || v != 7 {
		t.Fatalf("y = %v %v", v, ok)
	}
	if _, ok := SumMetric(text, "z"); ok {
		t.Fatal("z found")
	}
}
