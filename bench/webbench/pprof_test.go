package webbench

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hachat/hachat/demo"
)

// TestPProfPartsCoverTheBackEnd: --pprof reaches every core and every UCS
// of the bench's plan at both stages, so that the parts whose CPU per
// message the report gives (core-a, core-b, ucs) can be profiled in the
// same run as webapi and interaction (ucs once had no pprof port).
func TestPProfPartsCoverTheBackEnd(t *testing.T) {
	addrs, err := demo.FreeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, stage := range []demo.Stage{demo.StagePair, demo.StageMesh} {
		plan := demo.StandardPlan(demo.Layout{Addrs: addrs, Stage: stage, DataDir: t.TempDir()})
		n := 0
		for _, p := range plan.Parts {
			if p.Kind != demo.KindCore && p.Kind != demo.KindUCS {
				continue
			}
			n++
			if !slices.Contains(pprofParts, p.Name) {
				t.Errorf("stage %v: %s (%s) gets no pprof port with --pprof", stage, p.Name, p.Kind)
			}
		}
		if n < 3 {
			t.Errorf("stage %v: %d cores and UCS in the plan, want at least 3", stage, n)
		}
	}
}

// TestStartCPUProfile: with a path, the phase's profile is written there
// when stopped (stopping twice is harmless); without, nothing is profiled.
func TestStartCPUProfile(t *testing.T) {
	stop, err := startCPUProfile("")
	if err != nil || stop() != nil {
		t.Fatalf("no path: %v", err)
	}
	path := filepath.Join(t.TempDir(), "lg.prof")
	stop, err = startCPUProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("profile file: %v, %v", fi, err)
	}
}
