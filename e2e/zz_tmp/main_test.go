package tmp

import (
	"testing"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/e2e/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

func TestCoreUp(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{Tune: func(p demo.Plan) demo.Plan { return p.Without("webapi", "interaction") }})
	t.Log(c.Metric("core-a", "hachat_core_sessions_live"))
	c.DumpLogs(testWriter{t}, 10)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
