package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hachat/hachat/bench/webbench"
	"github.com/hachat/hachat/bench/webfloor"
	"github.com/hachat/hachat/telemetry"
)

// runBenchWeb is `hachat bench web`: the customer path end to end, customers
// through webapi and agents through interaction, at --chats concurrent chats.
func runBenchWeb(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Chats       int           `yaml:"chats"`
		Messages    int           `yaml:"messages"`
		Concurrency int           `yaml:"concurrency"`
		Setup       int           `yaml:"setup-concurrency"`
		Agents      int           `yaml:"agents"`
		Mesh        bool          `yaml:"sidecar"`
		Kill        bool          `yaml:"kill"`
		Progress    time.Duration `yaml:"progress"`
		JSON        bool          `yaml:"json"`
		PProf       bool          `yaml:"pprof"`
		CPUProfile  string        `yaml:"cpuprofile"`
		Floor       bool          `yaml:"floor"`
	}
	o.Chats, o.Messages, o.Concurrency, o.Setup, o.Mesh, o.Kill, o.Progress, o.Floor = 10000, 20000, 128, 64, true, true, 5*time.Second, true
	err := parseFlags("bench web", "Measure the customer path: customers through webapi (HTTP sends, SSE push channel open)\n"+
		"and agents through interaction, at --chats concurrent chats: messages/s, send-to-deliver p50/p99,\n"+
		"memory per chat, CPU per message, and the customer-visible gap of a kill -9 of the primary under load;\n"+
		"then the same load against the floor: a bare net/http server with the same HTTP and SSE shape and no core.",
		args, errw, &o, func(fs *flag.FlagSet) {
			fs.IntVar(&o.Chats, "chats", o.Chats, "concurrent chats (customers with open push channels)")
			fs.IntVar(&o.Messages, "messages", o.Messages, "customer messages in the measured phase")
			fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "concurrent customer senders")
			fs.IntVar(&o.Setup, "setup-concurrency", o.Setup, "concurrent chat starts")
			fs.IntVar(&o.Agents, "agents", o.Agents, "logged-in agents sharing the chats (default one per 100 chats)")
			fs.BoolVar(&o.Mesh, "sidecar", o.Mesh, "webapi and interaction reach the cores through their sidecars (xDS); false: given both cores")
			fs.BoolVar(&o.Kill, "kill", o.Kill, "then kill -9 the primary core under the same load and measure the gap")
			fs.DurationVar(&o.Progress, "progress", o.Progress, "interval of the progress line on stderr")
			fs.BoolVar(&o.JSON, "json", o.JSON, "print the report as JSON")
			fs.BoolVar(&o.PProf, "pprof", o.PProf, "every part (and the floor server) serves net/http/pprof on a loopback port (--pprof=127.0.0.1:0); the addresses go to stderr")
			fs.StringVar(&o.CPUProfile, "cpuprofile", o.CPUProfile, "write the load generator's own CPU profile of the measured message phase to this file")
			fs.BoolVar(&o.Floor, "floor", o.Floor, "then run the same chats and messages against the floor server (net/http and SSE alone, its own process)\n"+
				"and report its messages/s, latency, CPU per message and the ratio web/floor")
		})
	if err != nil {
		return err
	}
	rep, err := webbench.Run(ctx, webbench.Options{Chats: o.Chats, Messages: o.Messages, Concurrency: o.Concurrency,
		SetupConcurrency: o.Setup, Agents: o.Agents, Mesh: o.Mesh, Kill: o.Kill, PProf: o.PProf, CPUProfile: o.CPUProfile, Floor: o.Floor, ProgressEvery: o.Progress, Progress: errw})
	if err != nil {
		return err
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	rep.WriteText(out)
	return nil
}

// runBenchWebFloorServer is the hidden `hachat bench web-floor-server`: the
// floor server of `hachat bench web --floor` (package webfloor), its own
// process so that its CPU is counted apart. It prints its base URL as the
// first line of its standard output and serves until interrupted.
func runBenchWebFloorServer(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Listen string `yaml:"listen"`
		PProf  string `yaml:"pprof"`
	}
	o.Listen = "127.0.0.1:0"
	err := parseFlags("bench web-floor-server", "Serve the floor of bench web: the customer path's HTTP and SSE shape, no core.", args, errw, &o,
		func(fs *flag.FlagSet) {
			fs.StringVar(&o.Listen, "listen", o.Listen, "listen address")
			fs.StringVar(&o.PProf, "pprof", o.PProf, "serve net/http/pprof at this address too (its address goes to stderr); empty: off")
		})
	if err != nil {
		return err
	}
	if _, err := webbench.RaiseFileLimit(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("floor server: %w", err)
	}
	defer ln.Close()
	// The parts' telemetry serves --pprof (and logs its address, which the
	// bench reads from this process's standard error).
	tcfg := telemetry.DefaultConfig()
	tcfg.PProf = o.PProf
	tel, err := telemetry.Setup(ctx, tcfg, "floor", errw)
	if err != nil {
		return fmt.Errorf("floor server: %w", err)
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()
	if _, err := fmt.Fprintf(out, "http://%s\n", ln.Addr()); err != nil {
		return fmt.Errorf("floor server: %w", err)
	}
	return webfloor.New().Serve(ctx, ln)
}
