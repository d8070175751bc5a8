package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/hachat/hachat/clusterctl"
	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

const ctlSummary = `Cluster control, what Genesys SCI does for a chat server pair.

  hachat ctl status     [--state FILE | --core ADDR,ADDR] [--json]
  hachat ctl switchover [--state FILE [--pair P] | --core ADDR,ADDR] [--admin-token TOKEN]
  hachat ctl export     --chat ID | --email ADDR | --user-data KEY=VALUE [--state FILE | --ucs URL] [--admin-token TOKEN]
  hachat ctl delete     --chat ID | --email ADDR | --user-data KEY=VALUE [--state FILE | --ucs URL] [--admin-token TOKEN] [--json]
  hachat ctl health     --core ADDR [--service NAME]   (grpc.health.v1; exit 0 when SERVING)
  hachat ctl pairs      [--state FILE | --xds URL,URL] [--json]
  hachat ctl drain PAIR [--state FILE | --xds URL,URL] [--admin-token TOKEN] [--wait DURATION]
  hachat ctl undrain PAIR [--state FILE | --xds URL,URL] [--admin-token TOKEN]

pairs lists the pairs of cores as the control plane places chats on them
(state, live chats, placement weight). drain stops placing new chats on a
pair at every control plane, then waits (up to --wait; 0: not at all) and
reports when its last chat ended, with progress while it waits; undrain lets
the pair take new chats again.

The cores are found in the demo's state file unless --core names them; with
--state, the admin token and the operator's mTLS certificate come from the
state file's credentials too (flags override: --admin-token, --tls-*).
export and delete (GDPR) act on the transcripts in ucs (found in the state
file unless --ucs names it): export prints one chat, or every chat of the
customer who gave that email address or userData pair at chat start, as
JSON; delete removes them for good and leaves tombstones that refuse any
later save.`

// errMissingAdminToken: a switchover needs the admin token, and none was
// given or found.
var errMissingAdminToken = errors.New("missing admin token (--admin-token, or the demo's state file)")

func runCtl(ctx context.Context, args []string, out, errw io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(errw, ctlSummary)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	verb := args[0]
	pairName := ""
	if verb == "drain" || verb == "undrain" {
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			return fmt.Errorf("%s: name the pair: hachat ctl %s PAIR", verb, verb)
		}
		pairName = args[1]
		args = append([]string{verb}, args[2:]...)
	}
	var opts struct {
		XDS        string        `yaml:"xds"`
		Pair       string        `yaml:"pair"`
		Wait       time.Duration `yaml:"wait"`
		State      string        `yaml:"state"`
		Core       string        `yaml:"core"`
		JSON       bool          `yaml:"json"`
		AdminToken string        `yaml:"admin-token"`
		UCS        string        `yaml:"ucs"`
		Chat       string        `yaml:"chat"`
		Email      string        `yaml:"email"`
		UserData   string        `yaml:"user-data"`
		Timeout    time.Duration `yaml:"timeout"`
		Service    string        `yaml:"service"`
		TLS        mtls.Files    `yaml:",inline"`
	}
	opts.State = ".hachat/demo.json"
	opts.Timeout = 5 * time.Second
	opts.Wait = 10 * time.Minute
	err := parseFlags("ctl "+verb, ctlSummary, args[1:], errw, &opts, func(fs *flag.FlagSet) {
		fs.StringVar(&opts.State, "state", opts.State, "demo state file to find the cores in")
		fs.StringVar(&opts.Core, "core", opts.Core, "chat core gRPC addresses, comma-separated (instead of --state)")
		fs.BoolVar(&opts.JSON, "json", opts.JSON, "print JSON")
		fs.StringVar(&opts.AdminToken, "admin-token", opts.AdminToken, "admin token (switchover)")
		fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "timeout of each call")
		fs.StringVar(&opts.UCS, "ucs", opts.UCS, "ucs base URL (export, delete; instead of --state)")
		fs.StringVar(&opts.Chat, "chat", opts.Chat, "chat id (export, delete)")
		fs.StringVar(&opts.Email, "email", opts.Email, "customer's email address, as given at chat start (export, delete)")
		fs.StringVar(&opts.UserData, "user-data", opts.UserData, "customer's userData pair KEY=VALUE, as given at chat start (export, delete)")
		fs.StringVar(&opts.Service, "service", opts.Service, "health: the grpc.health.v1 service asked about (empty: the server as a whole)")
		fs.StringVar(&opts.Pair, "pair", opts.Pair, "status, switchover: only the cores of this pair (with --state; a switchover in a cluster of several pairs needs it)")
		fs.StringVar(&opts.XDS, "xds", opts.XDS, "control plane admin URLs, comma-separated (pairs, drain; instead of --state)")
		fs.DurationVar(&opts.Wait, "wait", opts.Wait, "drain: how long to wait for the pair's last chat to end (0: do not wait)")
		registerTLSFlags(fs, &opts.TLS)
	})
	if err != nil {
		return err
	}
	if verb == "pairs" || verb == "drain" || verb == "undrain" {
		return runCtlPairs(ctx, verb, pairName, opts.XDS, opts.State, opts.AdminToken, opts.TLS, opts.Timeout, opts.Wait, opts.JSON, out)
	}
	if verb == "export" || verb == "delete" {
		sel, err := clusterctl.ParseSelector(opts.Chat, opts.Email, opts.UserData)
		if err != nil {
			return err
		}
		p, err := ctlPrivacy(opts.UCS, opts.State, opts.AdminToken, opts.TLS, opts.Timeout)
		if err != nil {
			return err
		}
		if verb == "export" {
			ex, err := p.Export(ctx, sel)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(ex)
		}
		res, err := p.Delete(ctx, sel)
		if err != nil {
			return err
		}
		if opts.JSON {
			return json.NewEncoder(out).Encode(res)
		}
		return clusterctl.WriteDeleted(out, res)
	}
	addrs, err := ctlCores(opts.Core, opts.State)
	if err != nil {
		return err
	}
	if opts.Core == "" && (opts.Pair != "" || verb == "switchover") {
		of, all, err := clusterctl.CoresOfPair(opts.State, opts.Pair)
		if err != nil {
			return err
		}
		switch {
		case opts.Pair == "" && len(all) > 1:
			return fmt.Errorf("%s: the cluster runs pairs %s: name one with --pair", verb, strings.Join(all, ", "))
		case opts.Pair != "" && len(of) == 0:
			return fmt.Errorf("%s: no core of pair %q in %s (pairs: %s)", verb, opts.Pair, opts.State, strings.Join(all, ", "))
		case opts.Pair != "":
			addrs = of
		}
	}
	ctl, err := ctlClient(opts.TLS, opts.Core, opts.State)
	if err != nil {
		return err
	}
	switch verb {
	case "status":
		sts := ctl.Status(ctx, addrs, opts.Timeout)
		if opts.JSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(sts)
		}
		return clusterctl.WriteTable(out, sts)
	case "health":
		if len(addrs) != 1 {
			return fmt.Errorf("health: give one core with --core, got %d", len(addrs))
		}
		if err := ctl.Health(ctx, addrs[0], opts.Service, opts.Timeout); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: SERVING\n", addrs[0])
		return nil
	case "switchover":
		token := opts.AdminToken
		if token == "" {
			token = stateAdminToken(opts.Core, opts.State)
		}
		if token == "" {
			return errMissingAdminToken
		}
		resp, err := ctl.Switchover(ctx, addrs, token, opts.Timeout)
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

// ctlClient returns how ctl reaches the cores: the operator certificate of
// --tls-* or, with --state, of the demo's cert dir; plaintext otherwise.
func ctlClient(files mtls.Files, core, state string) (clusterctl.Ctl, error) {
	if !files.Enabled() && core == "" {
		if st, err := demo.ReadState(state); err == nil && st.Credentials.CertDir != "" {
			files = mtls.FilesIn(st.Credentials.CertDir, demo.OperatorName)
		}
	}
	if !files.Enabled() {
		return clusterctl.Ctl{}, nil
	}
	src, err := mtls.Load(files)
	if err != nil {
		return clusterctl.Ctl{}, err
	}
	return clusterctl.Ctl{Creds: credentials.NewTLS(src.ClientConfig(mtls.Allow(mtls.KindCore)))}, nil
}

// stateAdminToken returns the admin token of the demo's state file, when
// ctl finds the cores there ("" otherwise).
func stateAdminToken(core, state string) string {
	if core != "" {
		return ""
	}
	st, err := demo.ReadState(state)
	if err != nil {
		return ""
	}
	return st.Credentials.AdminToken
}

// ctlPrivacy wires export and delete: ucs from --ucs or the state file, the
// admin token from --admin-token or (without --ucs) the state file, the
// operator certificate from --tls-* or the state file's cert dir.
func ctlPrivacy(ucsURL, state, token string, files mtls.Files, timeout time.Duration) (clusterctl.Privacy, error) {
	fromState := ucsURL == ""
	if fromState {
		var err error
		if ucsURL, err = clusterctl.UCSFromState(state); err != nil {
			return clusterctl.Privacy{}, fmt.Errorf("find ucs (use --ucs or --state): %w", err)
		}
	}
	if token == "" && fromState {
		token = stateAdminToken("", state)
	}
	if token == "" {
		return clusterctl.Privacy{}, errMissingAdminToken
	}
	if !files.Enabled() && fromState {
		if st, err := demo.ReadState(state); err == nil && st.Credentials.CertDir != "" {
			files = mtls.FilesIn(st.Credentials.CertDir, demo.OperatorName)
		}
	}
	hc := &http.Client{Timeout: timeout}
	if files.Enabled() {
		src, err := mtls.Load(files)
		if err != nil {
			return clusterctl.Privacy{}, err
		}
		hc = src.HTTPClient(mtls.Allow(mtls.KindUCS), timeout)
	}
	return clusterctl.Privacy{UCS: ucsmock.NewClient(ucsURL, hc, telemetry.Discard()), AdminToken: token}, nil
}

// runCtlPairs runs pairs, drain and undrain against the control planes of
// --xds or the state file (admin token and operator certificate from the
// state file unless given).
func runCtlPairs(ctx context.Context, verb, pair, xdsURLs, state, token string, files mtls.Files, timeout, wait time.Duration, asJSON bool, out io.Writer) error {
	fromState := xdsURLs == ""
	var urls []string
	if fromState {
		var err error
		if urls, err = clusterctl.ControlPlanesFromState(state); err != nil {
			return fmt.Errorf("find the control planes (use --xds or --state): %w", err)
		}
		if token == "" {
			token = stateAdminToken("", state)
		}
		if !files.Enabled() {
			if st, err := demo.ReadState(state); err == nil && st.Credentials.CertDir != "" {
				files = mtls.FilesIn(st.Credentials.CertDir, demo.OperatorName)
			}
		}
	} else {
		urls = strings.Split(xdsURLs, ",")
	}
	hc := &http.Client{Timeout: timeout}
	if files.Enabled() {
		src, err := mtls.Load(files)
		if err != nil {
			return err
		}
		hc = src.HTTPClient(mtls.Allow(mtls.KindXDS), timeout)
	}
	ps := clusterctl.Pairs{URLs: urls, HTTP: hc, AdminToken: token}
	switch verb {
	case "pairs":
		st, err := ps.Status(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		fmt.Fprintf(out, "%-6s %-9s %-10s %6s %7s %s\n", "PAIR", "STATE", "PRIMARY", "LIVE", "WEIGHT", "ADOPTED-BY")
		for _, p := range st.Pairs {
			fmt.Fprintf(out, "%-6s %-9s %-10s %6d %7d %s\n", p.Name, p.State, orDash(p.Primary), p.Live, p.Weight, orDash(p.AdoptedBy))
		}
		return nil
	}
	if token == "" {
		return errMissingAdminToken
	}
	if err := ps.SetDraining(ctx, pair, verb == "drain"); err != nil {
		return err
	}
	if verb == "undrain" {
		fmt.Fprintf(out, "pair %s takes new chats again\n", pair)
		return nil
	}
	fmt.Fprintf(out, "pair %s draining: it takes no new chat at %d control plane(s); its chats go on\n", pair, len(urls))
	if wait <= 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	took, err := ps.WaitDrained(wctx, pair, time.Second, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pair %s drained: its last chat ended (waited %s)\n", pair, took.Round(time.Millisecond))
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
