package webbench

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

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

// TestRelaxGC: the measured phase runs at loadGCPercent and the setting
// comes back after it; a GOGC given in the environment is left alone.
func TestRelaxGC(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	t.Setenv("GOGC", "")
	restore := relaxGC()
	if got := debug.SetGCPercent(loadGCPercent); got != loadGCPercent {
		t.Errorf("GC percent in the phase %d, want %d", got, loadGCPercent)
	}
	restore()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent after the phase %d, want 100 back", got)
	}
	t.Setenv("GOGC", "50")
	restore = relaxGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent with GOGC set %d, want it untouched (100)", got)
	}
	restore()
}
