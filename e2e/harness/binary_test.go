package harness

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// `make build` builds bin/hachat with the flags and environment the tests
// build theirs with (only -v and -o may differ): a flag that changes how
// packages compile, such as -trimpath, would make `make demo` recompile
// everything `make test` has just built.
func TestMakeBuildLikeTheTests(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make here")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "-s", "-n", "build", "BIN=/tmp/hachat-make-n", "GO=go")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	var line []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); slices.Contains(f, "go") && slices.Contains(f, "build") {
			line = f
		}
	}
	if line == nil {
		t.Fatalf("make -n build runs no go build:\n%s", out)
	}
	var env, args []string
	for i := 0; i < len(line); i++ {
		switch w := line[i]; {
		case w == "go":
		case strings.Contains(w, "=") && len(args) == 0:
			env = append(env, w)
		case w == "-o":
			i++
		case w == "-v", w == "./cmd/hachat":
		default:
			args = append(args, w)
		}
	}
	if !slices.Equal(env, buildEnv) || !slices.Equal(args, buildArgs) {
		t.Fatalf("make build runs %q: environment %q and arguments %q, the tests build with %q and %q",
			strings.Join(line, " "), env, args, buildEnv, buildArgs)
	}
}
