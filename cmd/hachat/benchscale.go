package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/hachat/hachat/bench/scalebench"
)

// runBenchScale is `hachat bench scale`: the measured model of many pairs
// (issue 10): placement balance, the cost of losing a pair, the control
// plane's snapshot size and its push to many sidecars.
func runBenchScale(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Pairs           int     `yaml:"pairs"`
		Sessions        int     `yaml:"sessions"`
		Churn           int     `yaml:"churn"`
		PerPoll         int     `yaml:"per-poll"`
		Capacity        uint64  `yaml:"capacity"`
		Seed            uint64  `yaml:"seed"`
		Sidecars        int     `yaml:"sidecars"`
		RestoreSessions int     `yaml:"restore-sessions"`
		RestoreRate     float64 `yaml:"restore-rate"`
		SidecarProcess  bool    `yaml:"sidecar-process"`
		JSON            bool    `yaml:"json"`
	}
	o.SidecarProcess = true
	o.Pairs, o.Sessions, o.Churn, o.PerPoll, o.Capacity, o.Seed, o.Sidecars, o.RestoreSessions = 100, 1_000_000, -1, 500, 20000, 1, 1000, 10_000
	err := parseFlags("bench scale", "The measured model of many pairs, with the real code:\n"+
		"  placement: --sessions chats arrive over --pairs pairs, then --churn more arrive while as many end;\n"+
		"    the weights are xds.BuildPairs's from the live sessions, rebuilt every --per-poll arrivals (a poll);\n"+
		"  restore: a real pair of core processes holding --restore-sessions, its primary killed with -9:\n"+
		"    the backup's restore rate, and what losing the busiest pair costs at that rate;\n"+
		"  snapshot: every resource of --pairs pairs marshalled;\n"+
		"  push: the real control plane (xds.Server) to --sidecars ADS streams over loopback gRPC.",
		args, errw, &o, func(fs *flag.FlagSet) {
			fs.IntVar(&o.Pairs, "pairs", o.Pairs, "pairs of cores")
			fs.IntVar(&o.Sessions, "sessions", o.Sessions, "chats arriving in the ramp (the live sessions at its end)")
			fs.IntVar(&o.Churn, "churn", o.Churn, "chats arriving after the ramp, each with an end (-1: as many as --sessions; 0: none)")
			fs.IntVar(&o.PerPoll, "per-poll", o.PerPoll, "chats arriving per poll interval of the control plane (500: 2,000/s at the 250ms pair-poll)")
			fs.Uint64Var(&o.Capacity, "capacity", o.Capacity, "live sessions one pair holds at most (xds --pair-capacity)")
			fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the random picks")
			fs.IntVar(&o.Sidecars, "sidecars", o.Sidecars, "ADS client streams of the push")
			fs.IntVar(&o.RestoreSessions, "restore-sessions", o.RestoreSessions, "live sessions of the pair whose primary is killed")
			fs.Float64Var(&o.RestoreRate, "restore-rate", o.RestoreRate, "restore rate (sessions/s) to use instead of measuring it (0: measure)")
			fs.BoolVar(&o.SidecarProcess, "sidecar-process", o.SidecarProcess, "run the push's sidecar streams in a process of their own (false: in this one)")
			fs.BoolVar(&o.JSON, "json", o.JSON, "print the report as JSON")
		})
	if err != nil {
		return err
	}
	switch {
	case o.Pairs < 1 || o.Pairs > 4000:
		return usageError(errw, "--pairs %d: want 1 to 4000", o.Pairs)
	case o.Sessions < 1:
		return usageError(errw, "--sessions %d: want at least 1", o.Sessions)
	case o.Churn < -1:
		return usageError(errw, "--churn %d: want -1, 0 or more", o.Churn)
	case o.PerPoll < 1:
		return usageError(errw, "--per-poll %d: want at least 1", o.PerPoll)
	case o.Capacity < 1:
		return usageError(errw, "--capacity 0: want at least 1")
	case o.Sidecars < 1:
		return usageError(errw, "--sidecars %d: want at least 1", o.Sidecars)
	case o.RestoreRate < 0:
		return usageError(errw, "--restore-rate %g: want 0 (measure) or more", o.RestoreRate)
	case o.RestoreRate == 0 && o.RestoreSessions < 1:
		return usageError(errw, "--restore-sessions %d: want at least 1", o.RestoreSessions)
	}
	binary := ""
	if o.SidecarProcess {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the hachat binary for the sidecar process: %w", err)
		}
		binary = exe
	}
	churn := o.Churn
	switch churn {
	case -1:
		churn = o.Sessions
	case 0:
		churn = -1 // scalebench: negative is none
	}
	rep, err := scalebench.Run(ctx, scalebench.Options{
		Placement:   scalebench.PlacementOptions{Pairs: o.Pairs, Sessions: o.Sessions, Churn: churn, PerPoll: o.PerPoll, Capacity: o.Capacity, Seed: o.Seed},
		Push:        scalebench.PushOptions{Sidecars: o.Sidecars, Binary: binary},
		Restore:     scalebench.RestoreOptions{Sessions: o.RestoreSessions},
		SkipRestore: o.RestoreRate > 0, RestoreRate: o.RestoreRate,
	}, errw)
	if err != nil {
		return err
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	fmt.Fprintf(out, "hachat bench scale: %d pairs, %d sessions\n", o.Pairs, o.Sessions)
	rep.WriteText(out)
	return nil
}

// runBenchScaleSidecars is the hidden `hachat bench scale-sidecars`: the
// sidecar process of bench scale's push (one line per acknowledged
// response on stdout), until it is killed.
func runBenchScaleSidecars(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		XDS      string `yaml:"xds"`
		Sidecars int    `yaml:"sidecars"`
	}
	o.Sidecars = 1000
	err := parseFlags("bench scale-sidecars", "The sidecar streams of bench scale's push (internal).", args, errw, &o, func(fs *flag.FlagSet) {
		fs.StringVar(&o.XDS, "xds", o.XDS, "the control plane's xDS gRPC address")
		fs.IntVar(&o.Sidecars, "sidecars", o.Sidecars, "ADS streams, each on its own connection")
	})
	if err != nil {
		return err
	}
	if o.XDS == "" || o.Sidecars < 1 {
		return usageError(errw, "want --xds and --sidecars of at least 1")
	}
	return scalebench.RunSidecars(ctx, o.XDS, o.Sidecars, out)
}

// usageError tells the user what is wrong with the flags (errw) and
// returns errUsage: the user has been told.
func usageError(errw io.Writer, format string, args ...any) error {
	fmt.Fprintf(errw, "hachat bench: "+format+"\n", args...)
	return errUsage
}
