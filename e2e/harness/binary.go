// Package harness is the one place for end-to-end test helpers that start
// real hachat processes: it builds the hachat binary once per test binary,
// starts clusters from a demo.Plan on free loopback ports (through package
// demo, so the demo and the tests share one launcher), and offers clients for
// the customer API (GMS Chat API v2 shape), the agent API and ucsmock, plus
// the workload checker every failure-matrix test runs.
//
// A test package uses it like this:
//
//	func TestMain(m *testing.M) { harness.Main(m) }
//
//	func TestChat(t *testing.T) {
//		c := harness.StartCluster(t, harness.Options{})
//		chat := c.Customer().MustStart(t, "Ann")
//		...
//	}
package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
)

// buildArgs and buildEnv are how Binary builds hachat; `make build` builds
// bin/hachat the same way (TestMakeBuildLikeTheTests), so that `make demo`
// after `make test` finds every package in the build cache.
var (
	buildArgs = []string{"build"}
	buildEnv  = []string{"CGO_ENABLED=0"}
)

// Main runs the tests of a package that uses the harness and removes the
// binary it built. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Binary returns the path of the hachat binary under test: $HACHAT_BINARY
// when set, otherwise one built (once per test binary, CGO_ENABLED=0, no
// -race: the children are many and the machine small) from this module's
// ./cmd/hachat into a temporary directory.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("HACHAT_BINARY"); p != "" {
			buildPath, buildErr = filepath.Abs(p)
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "hachat-e2e-")
		if buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "hachat")
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		cmd := exec.Command(gobin, append(buildArgs, "-o", buildPath, "./cmd/hachat")...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), buildEnv...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/hachat: %w\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatalf("build hachat: %v", buildErr)
	}
	return buildPath
}

// moduleRoot finds the directory holding go.mod, walking up from the
// working directory (a test runs in its package's directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// ArtifactDir returns the repository's artifacts/ directory (gitignored),
// creating it: screenshots and other files a test keeps for people to see.
func ArtifactDir(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create artifacts dir: %v", err)
	}
	return dir
}
