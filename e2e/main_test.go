// Package e2e holds the end-to-end tests of hachat: every test starts real
// hachat processes through e2e/harness (the same launcher `hachat demo` uses)
// and talks to them only over their public APIs: the customer API of webapi,
// the agent API of interaction, ucsmock's HTTP API, the control plane's
// admin API, `hachat ctl`, and the parts' /metrics.
package e2e

import (
	"os"
	"testing"

	"github.com/hachat/hachat/e2e/harness"
)

func TestMain(m *testing.M) {
	if os.Getenv(xdsClientEnv) != "" {
		os.Exit(xdsClientMain())
	}
	harness.Main(m)
}
