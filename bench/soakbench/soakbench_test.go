package soakbench

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
go_goroutines_extra{x="y"} 7
go_memstats_heap_alloc_bytes 1.2345e+06 1700000000000
go_memstats_heap_alloc_bytes_total 9
go_memstats_next_gc_bytes 4.194304e+06
`
	got, err := parseMetrics(strings.NewReader(in), wanted)
	if err != nil {
		t.Fatal(err)
	}
	if got["go_goroutines"] != 42 || got["go_memstats_heap_alloc_bytes"] != 1234500 || got["go_memstats_next_gc_bytes"] != 4194304 || len(got) != 3 {
		t.Errorf("parsed %v", got)
	}
	if _, err := parseMetrics(strings.NewReader("go_goroutines many\n"), wanted); err == nil {
		t.Error("a malformed value parsed")
	}
}

func TestReadRSS(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "status")
	if err := os.WriteFile(p, []byte("Name:\thachat\nVmPeak:\t  9999 kB\nVmRSS:\t   2048 kB\nThreads:\t5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rss, err := readRSS(p); err != nil || rss != 2048*1024 {
		t.Errorf("rss %d, %v; want %d", rss, err, 2048*1024)
	}
	if err := os.WriteFile(p, []byte("Name:\thachat\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readRSS(p); err == nil {
		t.Error("a status without VmRSS read")
	}
	// This process's own status is real.
	if rss, err := readRSS("/proc/self/status"); err == nil && rss <= 0 {
		t.Errorf("own rss %d", rss)
	}
}

// samples builds one part's samples: heap values at 1 s steps, with phases
// switching at load and drain.
func samples(part string, load, drain int, heaps ...int64) []Sample {
	var out []Sample
	for i, h := range heaps {
		ph := PhaseIdle
		switch {
		case i >= drain:
			ph = PhaseDrain
		case i >= load:
			ph = PhaseLoad
		}
		out = append(out, Sample{At: time.Duration(i) * time.Second, Phase: ph, Part: part, Heap: h, Live: h / 2, RSS: 10 * h, Goroutines: 5, FDs: 3})
	}
	return out
}

func TestSummarizeVerdict(t *testing.T) {
	opts := Options{EndWindow: 3 * time.Second}
	opts.fill()
	// idle 0-1, load 2-4, drain 5-9; the end window is the last 3 s (7-9).
	// heap_alloc figures are minima, live figures medians; a part has
	// returned when either is back within 10%.
	cases := []struct {
		name         string
		heap, live   []int64
		returned     bool
		startH, endH int64
		startL, endL int64
	}{
		{"both back",
			[]int64{100, 120, 500, 900, 700, 400, 300, 130, 105, 140}, []int64{50, 50, 200, 400, 300, 200, 150, 52, 52, 60},
			true, 100, 105, 50, 52},
		{"both kept the load",
			[]int64{100, 120, 500, 900, 700, 400, 300, 150, 140, 160}, []int64{50, 50, 200, 400, 300, 200, 150, 80, 80, 80},
			false, 100, 140, 50, 80},
		{"heap minima noisy, live back",
			[]int64{100, 120, 500, 900, 700, 400, 300, 150, 140, 160}, []int64{50, 50, 200, 400, 300, 200, 150, 55, 55, 40},
			true, 100, 140, 50, 55},
		{"live flips between levels, heap back",
			[]int64{100, 120, 500, 900, 700, 400, 300, 130, 108, 140}, []int64{50, 50, 200, 400, 300, 200, 150, 70, 50, 70},
			true, 100, 108, 50, 70},
		{"a stale low idle sample and values before the window do not count",
			[]int64{100, 120, 500, 900, 700, 20, 20, 150, 140, 160}, []int64{40, 50, 200, 400, 300, 10, 10, 30, 80, 80},
			false, 100, 140, 50, 80},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ss := samples("p", 2, 5, tc.heap...)
			for i := range ss {
				ss[i].Live = tc.live[i]
			}
			got := summarize(ss, 5*time.Second, 9*time.Second+500*time.Millisecond, opts)
			if len(got) != 1 {
				t.Fatalf("%d summaries", len(got))
			}
			p := got[0]
			if p.Returned != tc.returned || p.StartLive != tc.startL || p.EndLive != tc.endL ||
				p.StartHeap != tc.startH || p.EndHeap != tc.endH || p.PeakHeap != 900 {
				t.Errorf("summary %+v, want returned %v heap %d→%d live %d→%d peak 900",
					p, tc.returned, tc.startH, tc.endH, tc.startL, tc.endL)
			}
		})
	}
}

func TestCSVAndPNG(t *testing.T) {
	rep := Report{LoadStart: 2 * time.Second, DrainStart: 5 * time.Second, End: 10 * time.Second}
	rep.Samples = append(samples("core-a", 2, 5, 1e6, 2e6, 5e6, 9e6, 7e6, 4e6, 3e6, 1e6, 1e6, 1e6),
		samples("interaction", 2, 5, 2e6, 2e6, 3e6, -1, 3e6, 3e6, 3e6, 2e6, 2e6, 2e6)...)
	var csvOut bytes.Buffer
	if err := WriteCSV(&csvOut, rep.Samples); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(csvOut.String()), "\n")
	if len(lines) != 21 || !strings.HasPrefix(lines[0], "seconds,phase,part,rss_bytes,heap_alloc_bytes,live_heap_estimate_bytes") {
		t.Errorf("csv: %d lines, header %q", len(lines), lines[0])
	}
	back, err := ReadCSV(bytes.NewReader(csvOut.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(rep.Samples) || back[13] != rep.Samples[13] {
		t.Errorf("read back %d samples, [13] %+v; want %d, %+v", len(back), back[13], len(rep.Samples), rep.Samples[13])
	}
	if again := Replay(back, Options{}); again.LoadStart != rep.LoadStart || again.DrainStart != rep.DrainStart || len(again.Parts) != 2 {
		t.Errorf("replayed phases %v %v, %d parts", again.LoadStart, again.DrainStart, len(again.Parts))
	}
	var pngOut bytes.Buffer
	if err := WritePNG(&pngOut, rep); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&pngOut)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != chartCols*panelW || b.Dy() != legendH+panelH {
		t.Errorf("chart %v", b)
	}
	if err := WritePNG(&bytes.Buffer{}, Report{}); err == nil {
		t.Error("a chart of nothing drawn")
	}
}
