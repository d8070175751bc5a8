package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/coord"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// coreFile is the configuration of `hachat core`: the --config YAML file has
// chatcore's keys (Genesys names such as transcript-auto-save) and the
// gossip-* keys at the top level, plus ucs and gossip, and the telemetry
// keys under telemetry.
type coreFile struct {
	chatcore.Config `yaml:",inline"`
	// UCS is the base URL of ucsmock (transcripts and epochs), or several
	// comma-separated base URLs of ucs instances that share one store
	// (ucs --store postgres), which the core fails over between.
	UCS string `yaml:"ucs"`
	// UCSToken is the writer token sent with every transcript save and
	// epoch claim (ucsmock --writer-token). Empty (the default) sends none.
	UCSToken string `yaml:"ucs-token"`
	// Gossip is the gossip bind address (host:port), an alias of
	// gossip-bind; with both empty (the default) the core runs without
	// membership. With gossip the core finds the other core and the witness
	// in the members' meta, so peer and witness may stay empty.
	Gossip string `yaml:"gossip"`
	// Coordination lists the etcd endpoints (host:port, comma-separated)
	// of the coordination cluster that holds the pair's epochs and the
	// primary's lease: `hachat coord` members or an etcd the deployment
	// already runs. Empty (the default) keeps the epochs at UCS, which then
	// is a single point of failure of failover.
	Coordination string            `yaml:"coordination"`
	Membership   membership.Config `yaml:",inline"`
	// TLS turns on mTLS (tls-ca, tls-cert, tls-key): the gRPC server, the
	// other core, UCS (an https:// ucs URL) and the witness.
	TLS       mtls.Files       `yaml:",inline"`
	Telemetry telemetry.Config `yaml:"telemetry"`
}

// UnmarshalYAML decodes the --config file strictly (unknown keys are
// errors), after turning Genesys-style bare-second durations such as
// `transcript-resend-delay: 5` into Go durations.
func (f *coreFile) UnmarshalYAML(n *yaml.Node) error {
	if err := chatcore.NormalizeYAMLDurations(n); err != nil {
		return err
	}
	b, err := yaml.Marshal(n)
	if err != nil {
		return fmt.Errorf("re-encode config: %w", err)
	}
	type plain coreFile // no UnmarshalYAML: no recursion
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode((*plain)(f)); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// registerFlags binds every option of `hachat core` to fs.
func (f *coreFile) registerFlags(fs *flag.FlagSet) {
	f.Config.RegisterFlags(fs)
	fs.StringVar(&f.UCS, "ucs", f.UCS, "base URL of ucsmock (transcripts, epochs); several comma-separated URLs of ucs instances sharing one store (ucs --store postgres) fail over between them")
	fs.StringVar(&f.UCSToken, "ucs-token", f.UCSToken, "writer token sent with transcript saves and epoch claims (ucs --writer-token); empty: none")
	fs.StringVar(&f.Coordination, "coordination", f.Coordination, "etcd endpoints host:port,... holding the epochs and the primary's lease (empty: epochs at UCS)")
	fs.StringVar(&f.Gossip, "gossip", f.Gossip, "gossip bind address host:port, alias of --gossip-bind (both empty: no membership)")
	f.Membership.RegisterFlags(fs)
	registerTLSFlags(fs, &f.TLS)
	f.Telemetry.RegisterFlags(fs)
}

// runCore runs one chat core until ctx is done.
func runCore(ctx context.Context, args []string, out, errw io.Writer) error {
	file := coreFile{Config: chatcore.DefaultConfig(), UCS: "http://127.0.0.1:7080",
		Membership: membership.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
	file.Membership.BindAddr = "" // gossip is opt-in for a core: --gossip or --gossip-bind
	err := parseFlags("core", "Run a chat core: sessions, event logs, transcript saves to UCS, primary/backup role,\n"+
		"synchronous replication to the other core of the pair, failover and switchover.\n"+
		"Options keep their Genesys names (transcript-auto-save, session-restoration-mode, ...).",
		args, errw, &file, file.registerFlags)
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, file.Telemetry, "core", errw)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))

	src, err := startTLS(ctx, file.TLS, tel.Logger)
	if err != nil {
		return err
	}
	store, err := ucsStore(file.UCS, file.UCSToken, httpClient(src, 10*time.Second, mtls.KindUCS), tel)
	if err != nil {
		return err
	}
	witnessClient := httpClient(src, time.Second, mtls.KindWitness, mtls.KindXDS)
	opts := []chatcore.Option{chatcore.WithWitness(func(ctx context.Context, witness, target string) (bool, error) {
		if src != nil {
			witness = "https://" + witness
		}
		return membership.AskReachable(ctx, witnessClient, witness, target)
	})}
	if src != nil {
		opts = append(opts, chatcore.WithTLS(src))
	}
	if file.Coordination != "" {
		var etcdTLS *tls.Config
		if src != nil {
			etcdTLS = src.ClientConfig(mtls.Allow(mtls.KindCoord))
		}
		cli, err := coord.Dial(file.Coordination, etcdTLS)
		if err != nil {
			return err
		}
		defer cli.Close()
		opts = append(opts, chatcore.WithFencer(chatcore.NewEtcdFencer(cli, coord.FencingPrefix, file.EpochLease)))
		tel.Logger.Info("epochs from the coordination cluster (etcd)", "endpoints", file.Coordination)
	}
	if file.Gossip != "" {
		file.Membership.BindAddr = file.Gossip
	}
	if file.Membership.BindAddr != "" {
		mcfg := file.Membership
		mcfg.Name = file.Name
		m, err := membership.New(ctx, mcfg, membership.Meta{Kind: membership.KindCore, Role: membership.RoleBackup,
			GRPCAddr: membership.Announced(file.GRPC, file.GRPCAdvertise),
			HTTPAddr: membership.Announced(file.HTTP, file.HTTPAdvertise), Pair: file.Pair}, tel)
		if err != nil {
			return fmt.Errorf("join the gossip cluster: %w", err)
		}
		defer func() {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := m.Leave(lctx); err != nil {
				tel.Logger.Warn("leave the gossip cluster", "err", err)
			}
			_ = m.Shutdown()
		}()
		opts = append(opts, chatcore.WithMembership(m))
	}
	core, err := chatcore.New(file.Config, store, tel, opts...)
	if err != nil {
		return err
	}
	return core.Run(ctx)
}

// ucsStore is the core's UCS client: one instance, or a failover client of
// the comma-separated instances of ucsURLs.
func ucsStore(ucsURLs, token string, hc *http.Client, tel *telemetry.Telemetry) (ucsmock.BatchStore, error) {
	urls := strings.Split(ucsURLs, ",")
	if len(urls) == 1 {
		return ucsmock.NewClient(ucsURLs, hc, tel).WithToken(token), nil
	}
	fc, err := ucsmock.NewFailoverClient(urls, func(u string) *ucsmock.Client {
		return ucsmock.NewClient(u, hc, tel).WithToken(token)
	}, tel)
	if err != nil {
		return nil, fmt.Errorf("--ucs: %w", err)
	}
	return fc, nil
}
