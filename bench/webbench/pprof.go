package webbench

import (
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/hachat/hachat/bench/benchcluster"
)

// pprofParts are the parts Options.PProf gives --pprof (those of the plan
// that run; the others are skipped).
var pprofParts = []string{"webapi", "interaction", "core-a", "core-b", "sidecar-webapi", "sidecar-interaction"}

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
