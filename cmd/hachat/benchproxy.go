package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/hachat/hachat/bench/proxybench"
	"github.com/hachat/hachat/mtls"
)

// runBenchProxy is `hachat bench proxy`: latency, throughput and the kill -9
// failover gap of a direct connection, the hachat sidecar and HAProxy, in one
// run. The echo upstreams are child processes of this executable started as
// `hachat bench echo-server` and the sidecar as `hachat bench proxy-sidecar`
// (both hidden).
func runBenchProxy(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Duration time.Duration `yaml:"duration"`
		Conns    int           `yaml:"conns"`
		Payload  int           `yaml:"payload"`
		Rounds   int           `yaml:"rounds"`
		Trials   int           `yaml:"trials"`
		HAProxy  string        `yaml:"haproxy"`
		JSON     bool          `yaml:"json"`
		Verbose  bool          `yaml:"verbose"`
		TLS      bool          `yaml:"tls"`
	}
	o.Duration, o.Conns, o.Payload, o.Rounds, o.Trials, o.HAProxy = 5*time.Second, 8, 64, 5, 10, "/usr/sbin/haproxy"
	err := parseFlags("bench proxy", "Measure the sidecar against a direct connection and HAProxy: p50/p99 latency,\n"+
		"throughput, and the kill -9 failover gap.", args, errw, &o, func(fs *flag.FlagSet) {
		fs.DurationVar(&o.Duration, "duration", o.Duration, "length of each latency phase")
		fs.IntVar(&o.Conns, "conns", o.Conns, "concurrent client connections, one round trip at a time each")
		fs.IntVar(&o.Payload, "payload", o.Payload, "request and response size in bytes")
		fs.IntVar(&o.Rounds, "rounds", o.Rounds, "turns the paths take (each path runs duration/rounds per turn)")
		fs.IntVar(&o.Trials, "trials", o.Trials, "kill -9 failover trials")
		fs.StringVar(&o.HAProxy, "haproxy", o.HAProxy, "HAProxy binary")
		fs.BoolVar(&o.JSON, "json", o.JSON, "print the report as JSON")
		fs.BoolVar(&o.Verbose, "verbose", o.Verbose, "print progress on stderr")
		fs.BoolVar(&o.TLS, "tls", o.TLS, "every hop mTLS (throwaway CA): clients, sidecar, HAProxy and echo servers")
	})
	if err != nil {
		return err
	}
	opts := proxybench.Options{Duration: o.Duration, Conns: o.Conns, PayloadSize: o.Payload, Rounds: o.Rounds, Trials: o.Trials, HAProxy: o.HAProxy, TLS: o.TLS}
	if o.Verbose {
		opts.Log = errw
	}
	rep, err := proxybench.Run(ctx, opts)
	if err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.WriteText(out)
	return nil
}

// runBenchEchoServer is the hidden `hachat bench echo-server`: a raw TCP
// echo that also answers Chat/Status, the upstream of `hachat bench proxy`.
func runBenchEchoServer(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Addr  string     `yaml:"addr"`
		Name  string     `yaml:"name"`
		Role  string     `yaml:"role"`
		Epoch uint64     `yaml:"epoch"`
		TLS   mtls.Files `yaml:",inline"`
	}
	o.Addr, o.Name, o.Role, o.Epoch = "127.0.0.1:0", "echo", "primary", 1
	err := parseFlags("bench echo-server", "Serve TCP echo plus Chat/Status (upstream stand-in for bench proxy).", args, errw, &o,
		func(fs *flag.FlagSet) {
			fs.StringVar(&o.Addr, "addr", o.Addr, "listen address")
			fs.StringVar(&o.Name, "name", o.Name, "name answered by Status")
			fs.StringVar(&o.Role, "role", o.Role, "role answered by Status: primary or backup")
			fs.Uint64Var(&o.Epoch, "epoch", o.Epoch, "epoch answered by Status")
			benchTLSFlags(fs, &o.TLS)
		})
	if err != nil {
		return err
	}
	var cfg *tls.Config
	if o.TLS.Enabled() {
		src, err := mtls.Load(o.TLS)
		if err != nil {
			return err
		}
		cfg = src.ServerConfig()
	}
	if err := proxybench.ServeEcho(ctx, o.Addr, proxybench.EchoStatus{Name: o.Name, Role: o.Role, Epoch: o.Epoch}, cfg); err != nil {
		return fmt.Errorf("echo server: %w", err)
	}
	return nil
}

// runBenchProxySidecar is the hidden `hachat bench proxy-sidecar`: the
// sidecar of `hachat bench proxy`, its own process like HAProxy, built from
// static resources in front of the two echo servers.
func runBenchProxySidecar(ctx context.Context, args []string, out, errw io.Writer) error {
	var o struct {
		Listen  string     `yaml:"listen"`
		Admin   string     `yaml:"admin"`
		Primary string     `yaml:"primary"`
		Backup  string     `yaml:"backup"`
		TLS     mtls.Files `yaml:",inline"`
	}
	o.Listen, o.Admin = "127.0.0.1:0", "127.0.0.1:0"
	err := parseFlags("bench proxy-sidecar", "Run the sidecar of bench proxy from static resources.", args, errw, &o,
		func(fs *flag.FlagSet) {
			fs.StringVar(&o.Listen, "listen", o.Listen, "data listener address")
			fs.StringVar(&o.Admin, "admin", o.Admin, "admin HTTP address")
			fs.StringVar(&o.Primary, "primary", o.Primary, "primary echo server address")
			fs.StringVar(&o.Backup, "backup", o.Backup, "backup echo server address")
			benchTLSFlags(fs, &o.TLS)
		})
	if err != nil {
		return err
	}
	return proxybench.ServeSidecar(ctx, o.Listen, o.Admin, o.Primary, o.Backup, o.TLS)
}

// benchTLSFlags are the --tls-* flags of the hidden bench children.
func benchTLSFlags(fs *flag.FlagSet, f *mtls.Files) {
	fs.StringVar(&f.CA, "tls-ca", "", "mTLS: CA bundle")
	fs.StringVar(&f.Cert, "tls-cert", "", "mTLS: certificate")
	fs.StringVar(&f.Key, "tls-key", "", "mTLS: key")
}
