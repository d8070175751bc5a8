package main

import (
	"context"
	"flag"
	"io"
	"time"

	"github.com/hachat/hachat/bench/webbench"
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
	}
	o.Chats, o.Messages, o.Concurrency, o.Setup, o.Mesh, o.Kill, o.Progress = 10000, 20000, 128, 64, true, true, 5*time.Second
	err := parseFlags("bench web", "Measure the customer path: customers through webapi (HTTP sends, SSE push channel open)\n"+
		"and agents through interaction, at --chats concurrent chats: messages/s, send-to-deliver p50/p99,\n"+
		"memory per chat, CPU per message, and the customer-visible gap of a kill -9 of the primary under load.",
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
			fs.BoolVar(&o.PProf, "pprof", o.PProf, "every part serves net/http/pprof on a loopback port (--pprof=127.0.0.1:0); the addresses go to stderr")
			fs.StringVar(&o.CPUProfile, "cpuprofile", o.CPUProfile, "write the load generator's own CPU profile of the measured message phase to this file")
		})
	if err != nil {
		return err
	}
	rep, err := webbench.Run(ctx, webbench.Options{Chats: o.Chats, Messages: o.Messages, Concurrency: o.Concurrency,
		SetupConcurrency: o.Setup, Agents: o.Agents, Mesh: o.Mesh, Kill: o.Kill, PProf: o.PProf, CPUProfile: o.CPUProfile, ProgressEvery: o.Progress, Progress: errw})
	if err != nil {
		return err
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	rep.WriteText(out)
	return nil
}
