// Package chaos_test runs `hachat chaos` end to end. It is a package of its
// own so that its two-minute run has its own test binary and timeout
// beside the other end-to-end tests.
package chaos_test

import (
	"testing"

	"github.com/hachat/hachat/e2e/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
