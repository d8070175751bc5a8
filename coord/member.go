// Package coord runs a member of the coordination cluster: an etcd server
// embedded in the hachat binary (go.etcd.io/etcd/server/v3/embed), so that
// the fencing authority of the chat cores is the consensus of three
// processes, not one. `hachat coord` wires it; chatcore.EtcdFencer is its
// client. Dial builds the etcd client a core uses.
package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/hachat/hachat/mtls"
)

// Config is one member's configuration: flags and YAML keys alike.
type Config struct {
	// Name is the member's name, unique in the cluster (e.g. "etcd-1").
	Name string `yaml:"name"`
	// DataDir holds the member's write-ahead log and database (default
	// .hachat/NAME.etcd). A member restarted on the same directory rejoins.
	DataDir string `yaml:"data-dir"`
	// Client is the host:port the member serves etcd clients on.
	Client string `yaml:"client"`
	// Peer is the host:port the member talks raft to the others on.
	Peer string `yaml:"peer"`
	// HTTP is the host:port of /healthz and /metrics (etcd's own metrics).
	HTTP string `yaml:"http"`
	// ClientAdvertise and PeerAdvertise are the host:port the member
	// announces to clients and to the other members (etcd's advertise
	// URLs) when Client or Peer is an address nobody else can dial, such
	// as 0.0.0.0 in a Kubernetes pod: a stable DNS name there. Empty:
	// Client and Peer themselves.
	ClientAdvertise string `yaml:"client-advertise"`
	PeerAdvertise   string `yaml:"peer-advertise"`
	// InitialCluster names every member's peer address, as
	// "etcd-1=127.0.0.1:7401,etcd-2=...,etcd-3=..." (host:port or URL).
	InitialCluster string `yaml:"initial-cluster"`
	// ClusterToken keeps clusters apart (etcd's initial-cluster-token).
	ClusterToken string `yaml:"cluster-token"`
	// HeartbeatMs and ElectionMs are raft's heartbeat interval and election
	// timeout. The defaults (50 ms, 600 ms) let a lease be as short as a
	// second (etcd's shortest lease is 1.5 election timeouts, rounded up to
	// seconds), so that a silent primary's lease lapses in about a second.
	HeartbeatMs uint `yaml:"heartbeat-ms"`
	ElectionMs  uint `yaml:"election-ms"`
	// TLS, when set, serves clients and peers with mTLS: the cluster's CA
	// and this member's workload certificate (kind coord).
	TLS mtls.Files `yaml:",inline"`
}

// DefaultConfig returns a single member on loopback ports.
func DefaultConfig() Config {
	return Config{Name: "etcd-1", Client: "127.0.0.1:7401", Peer: "127.0.0.1:7402", HTTP: "127.0.0.1:7403",
		ClusterToken: "hachat", HeartbeatMs: 50, ElectionMs: 600}
}

// Validate checks the configuration; it changes nothing.
func (c Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("coord: missing name")
	case c.Client == "" || c.Peer == "" || c.HTTP == "":
		return errors.New("coord: client, peer and http addresses are required")
	case c.HeartbeatMs == 0 || c.ElectionMs < 5*c.HeartbeatMs:
		return fmt.Errorf("coord: election-ms (%d) must be at least 5 heartbeats (%d ms)", c.ElectionMs, c.HeartbeatMs)
	}
	for _, a := range []struct{ name, listen, adv string }{
		{"client", c.Client, c.ClientAdvertise}, {"peer", c.Peer, c.PeerAdvertise},
	} {
		host, _, err := net.SplitHostPort(a.listen)
		if err != nil {
			return fmt.Errorf("coord: %s address: %w", a.name, err)
		}
		if ip := net.ParseIP(host); ip == nil && host != "localhost" {
			return fmt.Errorf("coord: %s address %q: want IP:port to listen on (a DNS name goes in %s-advertise)", a.name, a.listen, a.name)
		}
		if a.adv == "" {
			if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
				return fmt.Errorf("coord: %s address %q cannot be dialled by others: set %s-advertise", a.name, a.listen, a.name)
			}
			continue
		}
		ahost, _, err := net.SplitHostPort(a.adv)
		if err != nil || ahost == "" {
			return fmt.Errorf("coord: %s-advertise %q: want host:port", a.name, a.adv)
		}
		if ip := net.ParseIP(ahost); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("coord: %s-advertise %q cannot be dialled by others", a.name, a.adv)
		}
	}
	if _, err := c.initialCluster(); err != nil {
		return err
	}
	if c.TLS.Enabled() {
		return c.TLS.Validate()
	}
	return nil
}

// scheme is https with TLS.
func (c Config) scheme() string {
	if c.TLS.Enabled() {
		return "https"
	}
	return "http"
}

// advertised is adv, or listen when adv is empty.
func (c Config) advertised(listen, adv string) string {
	if adv != "" {
		return adv
	}
	return listen
}

// initialCluster turns InitialCluster (empty: this member alone) into
// etcd's name=URL list.
func (c Config) initialCluster() (string, error) {
	ic := c.InitialCluster
	if ic == "" {
		ic = c.Name + "=" + c.advertised(c.Peer, c.PeerAdvertise)
	}
	var out []string
	self := false
	for m := range strings.SplitSeq(ic, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(m), "=")
		if !ok || name == "" || addr == "" {
			return "", fmt.Errorf("coord: initial-cluster entry %q is not name=host:port", m)
		}
		if !strings.Contains(addr, "://") {
			addr = c.scheme() + "://" + addr
		}
		if _, err := url.Parse(addr); err != nil {
			return "", fmt.Errorf("coord: initial-cluster entry %q: %w", m, err)
		}
		self = self || name == c.Name
		out = append(out, name+"="+addr)
	}
	if !self {
		return "", fmt.Errorf("coord: initial-cluster does not name this member %q", c.Name)
	}
	return strings.Join(out, ","), nil
}

// Run starts the member and serves until ctx ends. /healthz answers 200
// once the member runs (a member of three is not ready alone: the others
// start after it); /metrics serves etcd's metrics.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	if ec.Dir == "" {
		ec.Dir = filepath.Join(".hachat", cfg.Name+".etcd")
	}
	var urls [4]*url.URL // client, client advertised, peer, peer advertised
	for i, a := range []string{cfg.Client, cfg.advertised(cfg.Client, cfg.ClientAdvertise), cfg.Peer, cfg.advertised(cfg.Peer, cfg.PeerAdvertise)} {
		u, err := url.Parse(cfg.scheme() + "://" + a)
		if err != nil {
			return fmt.Errorf("coord: address %q: %w", a, err)
		}
		urls[i] = u
	}
	cu, pu := urls[1], urls[3]
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*urls[0]}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*urls[2]}, []url.URL{*pu}
	ec.InitialCluster, _ = cfg.initialCluster()
	ec.InitialClusterToken = cfg.ClusterToken
	ec.TickMs, ec.ElectionMs = cfg.HeartbeatMs, cfg.ElectionMs
	ec.LogLevel = "warn"
	ec.AutoCompactionMode, ec.AutoCompactionRetention = "revision", "1000"
	if cfg.TLS.Enabled() {
		ti := transport.TLSInfo{CertFile: cfg.TLS.Cert, KeyFile: cfg.TLS.Key, TrustedCAFile: cfg.TLS.CA, ClientCertAuth: true}
		ec.ClientTLSInfo, ec.PeerTLSInfo = ti, ti
	}
	if zl, err := zap.NewProduction(); err == nil {
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	}
	var lc net.ListenConfig
	hl, err := lc.Listen(ctx, "tcp", cfg.HTTP)
	if err != nil {
		return fmt.Errorf("coord: listen http: %w", err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		hl.Close()
		return fmt.Errorf("coord: start etcd member %s: %w", cfg.Name, err)
	}
	defer e.Close()
	log.Info("coordination member started", "name", cfg.Name, "client", cu.String(), "peer", pu.String(),
		"initial_cluster", ec.InitialCluster, "data_dir", ec.Dir)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		lead := e.Server.Leader()
		fmt.Fprintf(w, "ok member=%s leader=%x\n", cfg.Name, uint64(lead))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.DefaultGatherer, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	herr := make(chan error, 1)
	go func() { herr <- hs.Serve(hl) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		<-herr
	}()
	go func() {
		select {
		case <-e.Server.ReadyNotify():
			log.Info("coordination member joined the cluster", "name", cfg.Name)
		case <-ctx.Done():
		case <-e.Server.StopNotify():
		}
	}()
	select {
	case <-ctx.Done():
		log.Info("coordination member stopping", "name", cfg.Name)
		return nil
	case err := <-e.Err():
		return fmt.Errorf("coord: member %s: %w", cfg.Name, err)
	case <-e.Server.StopNotify():
		return fmt.Errorf("coord: member %s stopped", cfg.Name)
	case err := <-herr:
		return fmt.Errorf("coord: serve http: %w", err)
	}
}
