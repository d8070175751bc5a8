package soakbench

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Phase is the part of a run a sample was taken in.
type Phase string

// The phases of a soak.
const (
	// PhaseWarmup: a short load that makes every part allocate what it
	// keeps once for good (connections, pools, caches), then lets it drain.
	PhaseWarmup Phase = "warmup"
	// PhaseIdle: after the warm-up, no load (the baseline).
	PhaseIdle Phase = "idle"
	// PhaseLoad: chats start, exchange messages and end; agents log in and out.
	PhaseLoad Phase = "load"
	// PhaseDrain: no new chats; the last ones finish, agents log out, then
	// the cluster idles.
	PhaseDrain Phase = "drain"
)

// Target is one process to sample: its name, PID and the base URL of its
// HTTP server (which serves Prometheus /metrics).
type Target struct {
	Name string // the part's name in the plan
	PID  int    // its process
	URL  string // http://host:port of its HTTP server
}

// Sample is one measurement of one part. A value that could not be read is
// -1 (and the reason is counted in Report.SampleErrors).
type Sample struct {
	At    time.Duration // since the start of the run
	Phase Phase
	Part  string
	RSS   int64 // bytes, /proc/PID/status VmRSS
	Heap  int64 // bytes, go_memstats_heap_alloc_bytes
	// Live estimates the heap live after the last collection: the heap goal
	// (go_memstats_next_gc_bytes) over 2, the goal being about twice the live
	// heap with GOGC=100, the parts' default. Unlike Heap it does not depend
	// on when in the collection cycle the sample falls. The runtime's goal
	// never goes below 4 MB, so a live heap under 2 MB shows as 2 MB.
	Live       int64
	Goroutines int64 // go_goroutines
	FDs        int64 // entries of /proc/PID/fd
}

// sampler reads the figures of each target.
type sampler struct {
	client *http.Client
	proc   string // the proc file system's root, "/proc"
}

// sample measures one target; the error tells what could not be read (the
// sample is still usable).
func (s sampler) sample(ctx context.Context, t Target, at time.Duration, ph Phase) (Sample, error) {
	out := Sample{At: at, Phase: ph, Part: t.Name, RSS: -1, Heap: -1, Live: -1, Goroutines: -1, FDs: -1}
	var errs []string
	if rss, err := readRSS(fmt.Sprintf("%s/%d/status", s.proc, t.PID)); err == nil {
		out.RSS = rss
	} else {
		errs = append(errs, err.Error())
	}
	if ents, err := os.ReadDir(fmt.Sprintf("%s/%d/fd", s.proc, t.PID)); err == nil {
		out.FDs = int64(len(ents))
	} else {
		errs = append(errs, err.Error())
	}
	if m, err := s.metrics(ctx, t.URL+"/metrics"); err == nil {
		if v, ok := m["go_memstats_heap_alloc_bytes"]; ok {
			out.Heap = int64(v)
		} else {
			errs = append(errs, t.Name+": no go_memstats_heap_alloc_bytes in /metrics")
		}
		if v, ok := m["go_memstats_next_gc_bytes"]; ok {
			out.Live = int64(v / 2)
		} else {
			errs = append(errs, t.Name+": no go_memstats_next_gc_bytes in /metrics")
		}
		if v, ok := m["go_goroutines"]; ok {
			out.Goroutines = int64(v)
		} else {
			errs = append(errs, t.Name+": no go_goroutines in /metrics")
		}
	} else {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("sample %s: %s", t.Name, strings.Join(errs, "; "))
	}
	return out, nil
}

// wanted are the unlabelled metrics the sampler reads.
var wanted = []string{"go_memstats_heap_alloc_bytes", "go_memstats_next_gc_bytes", "go_goroutines"}

func (s sampler) metrics(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics request: %w", err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return parseMetrics(resp.Body, wanted)
}

// parseMetrics reads the named unlabelled samples of a Prometheus text
// exposition.
func parseMetrics(r io.Reader, names []string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		for _, n := range names {
			if name != n {
				continue
			}
			val, _, _ := strings.Cut(strings.TrimSpace(rest), " ") // drop a timestamp
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return nil, fmt.Errorf("metric %s: %w", name, err)
			}
			out[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return out, nil
}

// readRSS returns VmRSS of a /proc/PID/status file, in bytes.
func readRSS(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("rss: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(v) // "12345 kB"
		if len(fields) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("rss %s: %w", path, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("rss %s: %w", path, err)
	}
	return 0, fmt.Errorf("rss %s: no VmRSS line", path)
}

// WriteCSV writes the samples, one line each, with a header.
func WriteCSV(w io.Writer, samples []Sample) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"seconds", "phase", "part", "rss_bytes", "heap_alloc_bytes", "live_heap_estimate_bytes", "goroutines", "open_fds"})
	for _, s := range samples {
		_ = cw.Write([]string{strconv.FormatFloat(s.At.Seconds(), 'f', 1, 64), string(s.Phase), s.Part,
			strconv.FormatInt(s.RSS, 10), strconv.FormatInt(s.Heap, 10), strconv.FormatInt(s.Live, 10),
			strconv.FormatInt(s.Goroutines, 10), strconv.FormatInt(s.FDs, 10)})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	return nil
}

// ReadCSV reads samples written by WriteCSV.
func ReadCSV(r io.Reader) ([]Sample, error) {
	recs, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read csv: %w", err)
	}
	if len(recs) == 0 || len(recs[0]) != 8 || recs[0][0] != "seconds" {
		return nil, errors.New("read csv: not a soak CSV (header seconds,phase,part,...)")
	}
	out := make([]Sample, 0, len(recs)-1)
	for i, rec := range recs[1:] {
		secs, err := strconv.ParseFloat(rec[0], 64)
		if err != nil {
			return nil, fmt.Errorf("read csv line %d: %w", i+2, err)
		}
		var n [5]int64
		for j := range n {
			if n[j], err = strconv.ParseInt(rec[3+j], 10, 64); err != nil {
				return nil, fmt.Errorf("read csv line %d: %w", i+2, err)
			}
		}
		out = append(out, Sample{At: time.Duration(secs * float64(time.Second)), Phase: Phase(rec[1]), Part: rec[2],
			RSS: n[0], Heap: n[1], Live: n[2], Goroutines: n[3], FDs: n[4]})
	}
	return out, nil
}
