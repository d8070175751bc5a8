package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hachat/hachat/clusterctl"
)

const ctlSummary = `Cluster control, what Genesys SCI does for a chat server pair.

  hachat ctl status     [--state FILE | --core ADDR,ADDR] [--json]
  hachat ctl switchover [--state FILE | --core ADDR,ADDR] --admin-token TOKEN

The cores are found in the demo's state file unless --core names them.`

func runCtl(ctx context.Context, args []string, out, errw io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(errw, ctlSummary)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	verb := args[0]
	var opts struct {
		State      string        `yaml:"state"`
		Core       string        `yaml:"core"`
		JSON       bool          `yaml:"json"`
		AdminToken string        `yaml:"admin-token"`
		Timeout    time.Duration `yaml:"timeout"`
	}
	opts.State = ".hachat/demo.json"
	opts.Timeout = 5 * time.Second
	err := parseFlags("ctl "+verb, ctlSummary, args[1:], errw, &opts, func(fs *flag.FlagSet) {
		fs.StringVar(&opts.State, "state", opts.State, "demo state file to find the cores in")
		fs.StringVar(&opts.Core, "core", opts.Core, "chat core gRPC addresses, comma-separated (instead of --state)")
		fs.BoolVar(&opts.JSON, "json", opts.JSON, "print JSON")
		fs.StringVar(&opts.AdminToken, "admin-token", opts.AdminToken, "admin token (switchover)")
		fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "timeout of each call")
	})
	if err != nil {
		return err
	}
	addrs, err := ctlCores(opts.Core, opts.State)
	if err != nil {
		return err
	}
	switch verb {
	case "status":
		sts := clusterctl.Status(ctx, addrs, opts.Timeout)
		if opts.JSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(sts)
		}
		return clusterctl.WriteTable(out, sts)
	case "switchover":
		resp, err := clusterctl.Switchover(ctx, addrs, opts.AdminToken, opts.Timeout)
		if err != nil {
			return err
		}
		if opts.JSON {
			return json.NewEncoder(out).Encode(resp)
		}
		fmt.Fprintf(out, "switchover done: %s is primary at epoch %d; clients paused %v\n",
			resp.GetNewPrimary(), resp.GetNewEpoch(), time.Duration(resp.GetPauseMicros())*time.Microsecond)
		return nil
	default:
		fmt.Fprintf(errw, "hachat ctl: unknown verb %q\n\n%s\n", verb, ctlSummary)
		return errUsage
	}
}

// ctlCores returns the cores' gRPC addresses from --core or the state file.
func ctlCores(core, state string) ([]string, error) {
	if core != "" {
		return strings.Split(core, ","), nil
	}
	addrs, err := clusterctl.CoresFromState(state)
	if err != nil {
		return nil, fmt.Errorf("find cores (use --core or --state): %w", err)
	}
	return addrs, nil
}
