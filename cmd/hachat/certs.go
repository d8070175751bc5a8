package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hachat/hachat/mtls"
)

const certsSummary = `Workload certificates for mTLS between hachat's parts (SPIFFE IDs
spiffe://<trust-domain>/<kind>/<name> in the URI SAN).

  hachat certs init  --dir DIR [--trust-domain TD] [--part KIND/NAME[=HOST,...]]... [--force | --exist-ok]
  hachat certs issue --dir DIR --part KIND/NAME[=HOST,...]... [--validity 8760h]
  hachat certs list  --dir DIR

init creates a CA (ca.pem, ca.key) and one certificate per --part
(NAME.pem, NAME.key); issue signs new ones with the existing CA (rotation:
running parts reload their files within a second, without a restart).
Kinds: ` + "core, ucs, xds, proxy, webapi, interaction, witness, operator, envoy, coord."

func runCerts(ctx context.Context, args []string, out, errw io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(errw, certsSummary)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	verb := args[0]
	var opts struct {
		Dir         string        `yaml:"dir"`
		TrustDomain string        `yaml:"trust-domain"`
		Parts       []string      `yaml:"part"`
		Force       bool          `yaml:"force"`
		ExistOK     bool          `yaml:"exist-ok"`
		Validity    time.Duration `yaml:"validity"`
	}
	opts.TrustDomain = mtls.DefaultTrustDomain
	opts.Validity = mtls.DefaultCertValidity
	err := parseFlags("certs "+verb, certsSummary, args[1:], errw, &opts, func(fs *flag.FlagSet) {
		fs.StringVar(&opts.Dir, "dir", opts.Dir, "cert dir (created by init)")
		fs.StringVar(&opts.TrustDomain, "trust-domain", opts.TrustDomain, "SPIFFE trust domain of a new CA")
		fs.Func("part", "KIND/NAME[=HOST,...]: a part to issue a certificate for (repeatable)", func(s string) error {
			opts.Parts = append(opts.Parts, s)
			return nil
		})
		fs.BoolVar(&opts.Force, "force", opts.Force, "init: replace an existing CA (every certificate must then be issued again)")
		fs.BoolVar(&opts.ExistOK, "exist-ok", opts.ExistOK, "init: keep an existing CA and certificates, issue only the missing ones (containers that start again)")
		fs.DurationVar(&opts.Validity, "validity", opts.Validity, "issue: validity of each new certificate")
	})
	if err != nil {
		return err
	}
	if opts.Dir == "" {
		return fmt.Errorf("--dir is required")
	}
	parts, err := parseParts(opts.Parts)
	if err != nil {
		return err
	}
	switch verb {
	case "init":
		initDir := mtls.Init
		if opts.ExistOK && !opts.Force {
			initDir = func(dir, td string, parts []mtls.Part, _ bool) (*mtls.CA, error) { return mtls.Ensure(dir, td, parts) }
		}
		ca, err := initDir(opts.Dir, opts.TrustDomain, parts, opts.Force)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "created CA of trust domain %s and %d certificates in %s\n", ca.TrustDomain(), len(parts), opts.Dir)
		return nil
	case "issue":
		if len(parts) == 0 {
			return fmt.Errorf("issue: at least one --part")
		}
		ca, err := mtls.LoadCA(opts.Dir)
		if err != nil {
			return err
		}
		for _, p := range parts {
			if err := ca.WritePart(opts.Dir, p, opts.Validity); err != nil {
				return err
			}
			fmt.Fprintf(out, "issued spiffe://%s/%s/%s (valid %v)\n", ca.TrustDomain(), p.Kind, p.Name, opts.Validity)
		}
		return nil
	case "list":
		return listCerts(out, opts.Dir)
	default:
		fmt.Fprintf(errw, "hachat certs: unknown verb %q\n\n%s\n", verb, certsSummary)
		return errUsage
	}
}

// parseParts reads KIND/NAME[=HOST,...] specs.
func parseParts(specs []string) ([]mtls.Part, error) {
	var out []mtls.Part
	for _, s := range specs {
		spec, hosts, _ := strings.Cut(s, "=")
		kind, name, ok := strings.Cut(spec, "/")
		if !ok || name == "" || !knownKind(kind) {
			return nil, fmt.Errorf("--part %q: want KIND/NAME[=HOST,...] with KIND one of %v", s, mtls.Kinds())
		}
		p := mtls.Part{Kind: kind, Name: name}
		if hosts != "" {
			p.Hosts = strings.Split(hosts, ",")
		}
		out = append(out, p)
	}
	return out, nil
}

func knownKind(k string) bool {
	for _, v := range mtls.Kinds() {
		if v == k {
			return true
		}
	}
	return false
}

// listCerts prints every certificate of dir with its identity and expiry.
func listCerts(out io.Writer, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.pem"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tIDENTITY\tNOT AFTER")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			fmt.Fprintf(tw, "%s\t(no PEM)\t\n", filepath.Base(f))
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			fmt.Fprintf(tw, "%s\t(%v)\t\n", filepath.Base(f), err)
			continue
		}
		id := ""
		for _, u := range c.URIs {
			id = u.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", filepath.Base(f), id, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}
