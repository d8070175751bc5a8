package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hachat/hachat/demo"
)

// demoConfig holds the flags of `hachat demo`.
type demoConfig struct {
	// Dir is the state directory: part logs and ucsmock's database (default .hachat).
	Dir string `yaml:"dir"`
	// State is the state file (default <dir>/demo.json).
	State string `yaml:"state"`
	// LogFormat is passed to every part (default text).
	LogFormat string `yaml:"log-format"`
	// Stage selects the cluster's size: 2 single core, 3 primary/backup,
	// 4 control plane and sidecars (default 4).
	Stage int `yaml:"stage"`
	// ReadyTimeout bounds each part's start (default 20s).
	ReadyTimeout time.Duration `yaml:"ready-timeout"`
	// Grace is the time between SIGTERM and SIGKILL at shutdown (default 5s).
	Grace time.Duration `yaml:"grace"`
	// FreePorts picks free loopback ports instead of the fixed demo ports
	// of docs/design.md (default false): for tests, or a second demo.
	FreePorts bool `yaml:"free-ports"`
	// UCSStore is ucs's store: bbolt (one ucs instance, the default) or
	// postgres (a throwaway PostgreSQL cluster and two ucs instances on it).
	UCSStore string `yaml:"ucs-store"`
	// Plaintext turns mTLS off between the parts (default false: the demo
	// issues a CA and a certificate per part in <dir>/certs).
	Plaintext bool `yaml:"plaintext"`
	// CoordMembers is how many coordination members (embedded etcd) hold
	// the cores' epochs (default 3; 0 keeps the epochs at UCS).
	CoordMembers int `yaml:"coord-members"`
	// Coordination points the cores at an etcd the deployment already runs
	// (host:port,...); then the demo starts no members of its own.
	Coordination string `yaml:"coordination"`
	// Pairs is how many primary/backup pairs of cores run (default 1:
	// core-a and core-b; pair p > 1 is core-<p>a and core-<p>b).
	Pairs int `yaml:"pairs"`
}

// runDemo starts the whole cluster on this machine, each part its own child
// process, and keeps it running until Ctrl-C or SIGTERM.
func runDemo(ctx context.Context, args []string, out, errw io.Writer) error {
	if len(args) > 0 && args[0] == "restart" {
		return runDemoRestart(ctx, args[1:], out, errw)
	}
	if len(args) > 0 && args[0] == "add-pair" {
		return runDemoAddPair(ctx, args[1:], out, errw)
	}
	cfg := demoConfig{Dir: ".hachat", LogFormat: "text", Stage: int(demo.StageMesh), UCSStore: "bbolt",
		ReadyTimeout: 20 * time.Second, Grace: 5 * time.Second, CoordMembers: 3, Pairs: 1}
	err := parseFlags("demo", "Run the whole cluster on this machine, each part its own process.\n"+
		"Writes the state file (who runs where, with PIDs), logs each part to <dir>/<part>.log,\n"+
		"never restarts a part by itself (`hachat demo restart NAME` does, when asked;\n"+
		"`hachat demo add-pair` starts one more pair of cores in the running cluster),\n"+
		"and stops everything on Ctrl-C or SIGTERM.",
		args, errw, &cfg, func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Dir, "dir", cfg.Dir, "state directory: part logs and ucsmock's database")
			fs.StringVar(&cfg.State, "state", cfg.State, "state file (default <dir>/demo.json)")
			fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format of every part: text or json")
			fs.IntVar(&cfg.Stage, "stage", cfg.Stage, "cluster: 2 single core, 3 primary and backup, 4 control plane and sidecars")
			fs.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "how long each part may take to become ready")
			fs.DurationVar(&cfg.Grace, "grace", cfg.Grace, "time between SIGTERM and SIGKILL when stopping parts")
			fs.BoolVar(&cfg.FreePorts, "free-ports", cfg.FreePorts, "use free loopback ports instead of the fixed demo ports")
			fs.StringVar(&cfg.UCSStore, "ucs-store", cfg.UCSStore, "ucs's store: bbolt (one ucs, <dir>/ucs.db) or postgres (a throwaway PostgreSQL cluster from Debian's postgresql package and two ucs instances on it)")
			fs.IntVar(&cfg.CoordMembers, "coord-members", cfg.CoordMembers, "coordination members (embedded etcd) holding the epochs: 0, 1 or 3 (0: epochs at UCS)")
			fs.StringVar(&cfg.Coordination, "coordination", cfg.Coordination, "use this etcd (host:port,...) for the epochs instead of starting members")
			fs.IntVar(&cfg.Pairs, "pairs", cfg.Pairs, fmt.Sprintf("primary/backup pairs of cores (1-%d; pair p > 1 is core-<p>a and core-<p>b)", demo.MaxPairs))
			fs.BoolVar(&cfg.Plaintext, "plaintext", cfg.Plaintext, "no mTLS between the parts (default: mTLS with certificates in <dir>/certs)")
		})
	if err != nil {
		return err
	}
	if cfg.LogFormat != "text" && cfg.LogFormat != "json" {
		return fmt.Errorf("--log-format must be text or json, not %q", cfg.LogFormat)
	}
	if cfg.Stage < int(demo.StageSingle) || cfg.Stage > int(demo.StageMesh) {
		return fmt.Errorf("--stage must be 2, 3 or 4, not %d", cfg.Stage)
	}
	if cfg.UCSStore != "bbolt" && cfg.UCSStore != "postgres" {
		return fmt.Errorf("--ucs-store must be bbolt or postgres, not %q", cfg.UCSStore)
	}
	if cfg.CoordMembers < 0 || cfg.CoordMembers > 3 {
		return fmt.Errorf("--coord-members must be 0 to 3, not %d", cfg.CoordMembers)
	}
	if cfg.Pairs < 1 || cfg.Pairs > demo.MaxPairs {
		return fmt.Errorf("--pairs must be 1 to %d, not %d", demo.MaxPairs, cfg.Pairs)
	}
	if cfg.Pairs > 1 && cfg.Stage < int(demo.StageMesh) {
		return fmt.Errorf("--pairs %d needs --stage 4: the control plane routes each chat to its pair", cfg.Pairs)
	}
	if cfg.State == "" {
		cfg.State = filepath.Join(cfg.Dir, "demo.json")
	}
	addrs := demo.DefaultAddrs()
	if cfg.FreePorts {
		if addrs, err = demo.FreeAddrs(); err != nil {
			return err
		}
	}
	// Before anything is written or started: a demo beside a running one
	// would fail part by part and overwrite its state file.
	if err := demo.CheckFree(cfg.State, addrs); err != nil {
		return err
	}
	layout := demo.Layout{
		Addrs:        addrs,
		Stage:        demo.Stage(cfg.Stage),
		DataDir:      cfg.Dir,
		LogFormat:    cfg.LogFormat,
		CoordMembers: cfg.CoordMembers,
		Coordination: cfg.Coordination,
		UCSStore:     cfg.UCSStore,
		Pairs:        cfg.Pairs,
	}
	var ucsStore *demo.UCSStoreState
	if cfg.UCSStore == "postgres" {
		pg, st, err := demo.StartPostgres(ctx, cfg.Dir)
		if err != nil {
			return err
		}
		defer pg.Stop()
		layout.UCSPostgres, ucsStore = st.DSN, &st
		fmt.Fprintf(out, "postgresql (ucs store) ready: pid %d, cluster in %s\n", st.PID, st.Dir)
	}
	// Every stage runs mTLS unless --plaintext: the sidecars and the
	// control plane speak it too.
	if !cfg.Plaintext {
		layout.CertDir = filepath.Join(cfg.Dir, "certs")
	}
	plan := demo.StandardPlan(layout)
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	accounts, err := demo.WriteAccounts(layout.AccountsFile(), demo.DemoAccounts())
	if err != nil {
		return fmt.Errorf("demo accounts: %w", err)
	}
	layout = layout.Filled()
	creds := demo.Credentials{Accounts: accounts, AdminToken: layout.AdminToken, UCSReaderToken: layout.UCSReaderToken, CertDir: layout.CertDir}
	var clientTLS *tls.Config
	if layout.CertDir != "" {
		if err := demo.EnsureCerts(layout.CertDir, plan); err != nil {
			return err
		}
		if clientTLS, err = demo.OperatorTLS(layout.CertDir); err != nil {
			return err
		}
	}
	var logger *slog.Logger
	if cfg.LogFormat == "json" {
		logger = slog.New(slog.NewJSONHandler(errw, nil)).With("part", "demo")
	} else {
		logger = slog.New(slog.DiscardHandler) // text mode: the progress lines tell the story
	}
	progress := out
	if cfg.LogFormat == "json" {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "hachat demo: starting %d parts (logs in %s/)\n", len(plan.Parts), cfg.Dir)
	sup, err := demo.Start(ctx, plan, demo.Options{
		Dir: cfg.Dir, StatePath: cfg.State, Progress: progress, Logger: logger,
		ReadyTimeout: cfg.ReadyTimeout, Grace: cfg.Grace, TLS: clientTLS, Credentials: creds, UCSStore: ucsStore,
		Control: demo.ControlPath(cfg.State),
		NewPair: func(p int) ([]demo.Part, error) {
			if layout.Stage < demo.StageMesh {
				return nil, fmt.Errorf("%w: pairs need --stage 4 (the control plane routes each chat to its pair)", demo.ErrNoNewPair)
			}
			parts := demo.PairParts(layout, p, p)
			if layout.CertDir != "" {
				if err := demo.EnsureCerts(layout.CertDir, demo.Plan{Parts: parts}); err != nil {
					return nil, err
				}
			}
			return parts, nil
		},
	})
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	fmt.Fprintln(out)
	sup.WriteTable(out)
	entry := plan.Entrypoints
	fmt.Fprintf(out, "\nstate file: %s (with the credentials: admin token, UCS reader token)\n", cfg.State)
	fmt.Fprintf(out, "entrypoints: customer %s    agent %s\n", entry.Customer, entry.Agent)
	fmt.Fprintf(out, "customer web sample: %s/    agent desktop: %s/agent\n", entry.Customer, entry.Agent)
	fmt.Fprintf(out, "agent desktop logins (new passwords at each start; also in the state file):\n")
	for _, a := range accounts {
		fmt.Fprintf(out, "    %-8s %-10s password %s\n", a.User, a.Role, a.Password)
	}
	fmt.Fprintf(out, "cluster status: hachat ctl status --state %s\n", cfg.State)
	fmt.Fprintf(out, "try: kill -9 the primary's pid from the state file; bring it back: hachat demo restart core-a --state %s\n", cfg.State)
	fmt.Fprintf(out, "Ctrl-C stops everything.\n")
	<-ctx.Done()
	fmt.Fprintf(progress, "\nhachat demo: stopping every part\n")
	sup.Stop()
	fmt.Fprintf(progress, "hachat demo: stopped\n")
	return nil
}
