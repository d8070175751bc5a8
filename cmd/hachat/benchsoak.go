package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hachat/hachat/bench/benchcluster"
	"github.com/hachat/hachat/bench/soakbench"
	"github.com/hachat/hachat/demo"
)

const benchSoakSummary = `Soak the whole cluster (ucs, two cores, the xDS control plane, two sidecars,
webapi, interaction; each its own process) and watch every part's memory.

Phases: --warmup of load (so that what a part allocates once for good, connections,
pools, caches, is in the baseline), --idle with no load (the baseline), --duration of
steady load (customers on webapi start chats, follow their push channel and send
--messages each; agents on interaction log in, accept offers, answer, close the chat
once the customer has left, and log out and in again every --chats-per-shift chats;
--chats chats live at once), then --drain: the last chats end, the agents log out, the
cluster idles.

Every --every it samples each part: RSS (/proc/PID/status VmRSS), Go heap
(go_memstats_heap_alloc_bytes) and goroutines (go_goroutines) from the part's
/metrics, and open file descriptors (/proc/PID/fd). A progress line every 10s.

It writes <out>.csv (every sample) and <out>.png (per part, heap and RSS over time,
phases shaded, the 10% threshold dashed), and prints per part the start, peak and end
heap and whether it came back within 10% of its start.
No GC is forced (no part exposes a way). Start is taken over the idle phase, end over
the last --end-window of the drain, of two figures: the MINIMUM heap in use (heap_alloc;
the Go runtime collects at least every 2 minutes, so a window over 2m holds a sample
taken soon after a collection) and the MEDIAN live heap estimate, half the runtime's
heap goal (go_memstats_next_gc_bytes / 2 with GOGC=100; its floor of 4 MB reads as 2 MB).
Each overstates the live heap in its own way (heap_alloc by garbage not yet collected, a
megabyte with the sampling phase on a part that collects every few seconds; the goal by
stacks and timing: a core's flips between two levels) and a part that keeps memory
raises both, so a part has returned when EITHER end figure is within 10% of its start.
Exit status 1 when a part did not return.`

func runBenchSoak(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Duration      time.Duration `yaml:"duration"`
		Warmup        time.Duration `yaml:"warmup"`
		Idle          time.Duration `yaml:"idle"`
		Drain         time.Duration `yaml:"drain"`
		EndWindow     time.Duration `yaml:"end-window"`
		Every         time.Duration `yaml:"every"`
		Chats         int           `yaml:"chats"`
		Agents        int           `yaml:"agents"`
		Messages      int           `yaml:"messages"`
		Interval      time.Duration `yaml:"message-interval"`
		ChatsPerShift int           `yaml:"chats-per-shift"`
		Out           string        `yaml:"out"`
		Replot        string        `yaml:"replot"`
		JSON          bool          `yaml:"json"`
	}
	o.Duration, o.Warmup, o.Idle, o.Drain, o.EndWindow, o.Every = 2*time.Minute, 30*time.Second, 130*time.Second, 150*time.Second, 130*time.Second, 2*time.Second
	o.Chats, o.Agents, o.Messages, o.Interval, o.ChatsPerShift = 12, 4, 10, 300*time.Millisecond, 5
	o.Out = "soak-" + time.Now().Format("20060102-150405")
	err := parseFlags("bench soak", benchSoakSummary, args, errw, &o, func(fs *flag.FlagSet) {
		fs.DurationVar(&o.Duration, "duration", o.Duration, "load phase")
		fs.DurationVar(&o.Warmup, "warmup", o.Warmup, "load before the baseline (negative: none)")
		fs.DurationVar(&o.Idle, "idle", o.Idle, "baseline phase before the load (keep it over 2m: see above)")
		fs.DurationVar(&o.Drain, "drain", o.Drain, "phase after the load (at least --end-window + 10s)")
		fs.DurationVar(&o.EndWindow, "end-window", o.EndWindow, "end of the drain whose minimum heap sample is the end heap")
		fs.DurationVar(&o.Every, "every", o.Every, "sampling period")
		fs.IntVar(&o.Chats, "chats", o.Chats, "chats live at once during the load")
		fs.IntVar(&o.Agents, "agents", o.Agents, "agents")
		fs.IntVar(&o.Messages, "messages", o.Messages, "messages each side sends per chat")
		fs.DurationVar(&o.Interval, "message-interval", o.Interval, "pause between one side's messages")
		fs.IntVar(&o.ChatsPerShift, "chats-per-shift", o.ChatsPerShift, "chats an agent takes before it logs out and in again")
		fs.StringVar(&o.Out, "out", o.Out, "path prefix of the CSV and PNG files")
		fs.StringVar(&o.Replot, "replot", o.Replot, "run nothing: read this soak CSV, redraw its PNG beside it and print its verdict (with --end-window)")
		fs.BoolVar(&o.JSON, "json", o.JSON, "print the summary as JSON (every sample stays in the CSV)")
	})
	if err != nil {
		return err
	}
	if o.Replot != "" {
		return replotSoak(o.Replot, o.EndWindow, out)
	}
	var specs []demo.AccountSpec
	for i := range max(o.Agents, 1) {
		specs = append(specs, demo.AccountSpec{User: soakbench.AgentID(i), Role: "agent"})
	}
	bc, err := benchcluster.StartWith(ctx, demo.StageMesh, benchcluster.Options{Whole: true, Accounts: specs}, errw)
	if err != nil {
		return err
	}
	defer bc.Stop()
	cl := soakbench.Cluster{WebAPI: "http://" + bc.Layout.Addrs.WebAPI, Interaction: "http://" + bc.Layout.Addrs.Interaction,
		Passwords: map[string]string{}}
	for _, a := range bc.Accounts {
		cl.Passwords[a.User] = a.Password
	}
	for _, p := range bc.Plan().Parts {
		pid, err := bc.PID(p.Name)
		if err != nil {
			return err
		}
		cl.Parts = append(cl.Parts, soakbench.Target{Name: p.Name, PID: pid, URL: p.URL()})
	}
	fmt.Fprintf(errw, "hachat bench soak: cluster up (logs in %s); warm-up %v, idle %v, load %v, drain %v\n",
		bc.Dir(), o.Warmup, o.Idle, o.Duration, o.Drain)
	rep, runErr := soakbench.Run(ctx, cl, soakbench.Options{Duration: o.Duration, Warmup: o.Warmup, Idle: o.Idle, Drain: o.Drain,
		EndWindow: o.EndWindow, Every: o.Every, Chats: o.Chats, Agents: o.Agents, Messages: o.Messages,
		MessageInterval: o.Interval, ChatsPerShift: o.ChatsPerShift}, errw)
	if err := writeSoakFiles(o.Out, rep); err != nil {
		return err
	}
	if o.JSON {
		if err := writeJSON(out, soakJSON(rep, o.Out)); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "hachat bench soak: whole cluster (mesh), %v load\n", o.Duration)
		rep.WriteSummary(out)
		fmt.Fprintf(out, "samples: %s.csv  chart: %s.png\n", o.Out, o.Out)
	}
	if runErr != nil {
		return fmt.Errorf("soak interrupted: %w", runErr)
	}
	if !rep.AllReturned() {
		return errors.New("soak: a part did not return to within 10% of its starting heap")
	}
	return nil
}

// replotSoak judges and redraws a soak from its CSV.
func replotSoak(path string, endWindow time.Duration, out io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("replot: %w", err)
	}
	samples, err := soakbench.ReadCSV(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("replot %s: %w", path, err)
	}
	rep := soakbench.Replay(samples, soakbench.Options{EndWindow: endWindow})
	png := strings.TrimSuffix(path, ".csv") + ".png"
	fh, err := os.Create(png)
	if err != nil {
		return fmt.Errorf("replot: %w", err)
	}
	werr := soakbench.WritePNG(fh, rep)
	if cerr := fh.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("replot %s: %w", png, werr)
	}
	fmt.Fprintf(out, "hachat bench soak: replayed %s (workload totals are not in the CSV)\n", path)
	rep.WriteSummary(out)
	fmt.Fprintf(out, "chart: %s\n", png)
	if !rep.AllReturned() {
		return errors.New("soak: a part did not return to within 10% of its starting heap")
	}
	return nil
}

// writeSoakFiles writes prefix.csv and prefix.png.
func writeSoakFiles(prefix string, rep soakbench.Report) error {
	if dir := filepath.Dir(prefix); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("soak output dir: %w", err)
		}
	}
	for _, f := range []struct {
		ext   string
		write func(io.Writer) error
	}{
		{".csv", func(w io.Writer) error { return soakbench.WriteCSV(w, rep.Samples) }},
		{".png", func(w io.Writer) error { return soakbench.WritePNG(w, rep) }},
	} {
		fh, err := os.Create(prefix + f.ext)
		if err != nil {
			return fmt.Errorf("soak output: %w", err)
		}
		werr := f.write(fh)
		if cerr := fh.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("soak output %s: %w", prefix+f.ext, werr)
		}
	}
	return nil
}

// soakJSON is the --json summary of a soak: everything the text summary
// says, without the samples (they are in the CSV). Durations in nanoseconds.
func soakJSON(rep soakbench.Report, prefix string) any {
	return struct {
		CSV            string                  `json:"csv"`
		PNG            string                  `json:"png"`
		AllReturned    bool                    `json:"all_returned"`
		IdleStart      time.Duration           `json:"idle_start_ns"`
		LoadStart      time.Duration           `json:"load_start_ns"`
		DrainStart     time.Duration           `json:"drain_start_ns"`
		End            time.Duration           `json:"end_ns"`
		ChatsStarted   int64                   `json:"chats_started"`
		ChatsEnded     int64                   `json:"chats_ended"`
		Messages       int64                   `json:"messages"`
		Logins         int64                   `json:"logins"`
		Logouts        int64                   `json:"logouts"`
		Errors         int64                   `json:"errors"`
		LastError      string                  `json:"last_error,omitempty"`
		SampleErrors   int                     `json:"sample_errors"`
		Parts          []soakbench.PartSummary `json:"parts"`
		WarmupChats    int64                   `json:"warmup_chats"`
		WarmupMessages int64                   `json:"warmup_messages"`
	}{prefix + ".csv", prefix + ".png", rep.AllReturned(), rep.IdleStart, rep.LoadStart, rep.DrainStart, rep.End,
		rep.ChatsStarted, rep.ChatsEnded, rep.Messages, rep.Logins, rep.Logouts, rep.Errors, rep.LastError,
		rep.SampleErrors, rep.Parts, rep.WarmupChats, rep.WarmupMessages}
}
