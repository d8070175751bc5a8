package webbench

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime/pprof"

	"github.com/hachat/hachat/bench/benchcluster"
)

// pprofParts are the parts Options.PProf gives --pprof (those of the plan
// that run; the others are skipped).
var pprofParts = []string{"webapi", "interaction", "core-a", "core-b", "ucs", "sidecar-webapi", "sidecar-interaction"}

// pprofLine matches the address in a part's "pprof serving" log line.
var pprofLine = regexp.MustCompile(`pprof serving.*?addr=([0-9.:\[\]a-f]+)`)

// reportPProf writes the pprof address of every part that logged one.
func reportPProf(bc *benchcluster.Cluster, w io.Writer) {
	for _, p := range bc.Plan().Parts {
		data, err := os.ReadFile(bc.LogPath(p.Name))
		if err != nil {
			continue
		}
		if m := pprofLine.FindSubmatch(data); m != nil {
			fmt.Fprintf(w, "pprof %-20s http://%s/debug/pprof/\n", p.Name, m[1])
		}
	}
}

// startCPUProfile profiles this process into path until the returned stop
// is called; an empty path profiles nothing.
func startCPUProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	var stopped bool
	return func() error {
		if stopped {
			return nil
		}
		stopped = true
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		return nil
	}, nil
}
