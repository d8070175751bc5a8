package proxy

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hachat/hachat/mtls"
)

// Config is the configuration of one sidecar. The yaml tags are the flag
// names. Every upstream comes from xDS: from one of the control planes in
// XDS, or, while none answers, from the last accepted configuration kept in
// XDSCache.
type Config struct {
	// NodeID is the xDS node id the sidecar announces (default "sidecar").
	// The control plane may keep per-node snapshots keyed by it.
	NodeID string `yaml:"node-id"`
	// NodeCluster is the xDS node cluster (default "hachat-sidecar").
	NodeCluster string `yaml:"node-cluster"`
	// XDS lists the control planes' ADS addresses, comma-separated
	// (default 127.0.0.1:7200). The sidecar holds one stream at a time and
	// moves to the next address when its control plane is lost or does not
	// answer; every control plane serves the same content under the same
	// versions, so a move changes nothing that was already applied.
	XDS string `yaml:"xds"`
	// XDSCache is a file where the sidecar keeps its last accepted
	// configuration (written atomically after every change) and from which
	// it starts when no control plane answers. Empty (the default) keeps
	// nothing on disk. A file that fails validation is refused with a log
	// line and ignored: the sidecar then waits for a control plane.
	XDSCache string `yaml:"xds-cache"`
	// Listen is the address the data listener binds (default 127.0.0.1:7301).
	// The address inside the LDS Listener is ignored: it is the control
	// plane's view, the sidecar's own port is local configuration.
	Listen string `yaml:"listen"`
	// Listener is the name of the LDS Listener whose tcp_proxy filter names
	// the upstream cluster (default "chatcore-sidecar"). Empty means: the one
	// non-API listener with a tcp_proxy filter.
	Listener string `yaml:"listener"`
	// Admin is the admin HTTP address: /proxy/v1/clusters, /healthz,
	// /metrics (default 127.0.0.1:7302). Empty disables it.
	Admin string `yaml:"admin"`
	// BreakerFailures is how many consecutive connect failures open a host's
	// circuit breaker (default 3).
	BreakerFailures uint32 `yaml:"breaker-failures"`
	// BreakerOpen is how long an open breaker rejects connects before it lets
	// one half-open probe through (default 1s).
	BreakerOpen time.Duration `yaml:"breaker-open"`
	// ConnectAttempts is how many upstream hosts a new connection tries, in
	// order of preference, before it is closed (default 3).
	ConnectAttempts int `yaml:"connect-attempts"`
	// ADSBackoffMax caps the reconnect backoff to the control plane (default
	// 2s; the first retry waits about 50ms, doubling, with jitter).
	ADSBackoffMax time.Duration `yaml:"ads-backoff-max"`
	// TLS names the sidecar's certificate files (tls-ca, tls-cert,
	// tls-key; see package mtls). Set, every hop of the sidecar is mTLS:
	// the data listener terminates it (clients of ClientKinds), connections
	// to the cores originate it (a core's identity required), the health
	// checks and the ADS stream use it, and the admin API serves HTTPS
	// (AdminPolicy). Unset (the default), everything is plaintext.
	TLS mtls.Files `yaml:",inline"`
	// Ingress makes the data listener public (the edge, see Ingress): the
	// sidecar passes the client's bytes through to the upstream untouched,
	// so TLS, if any, is between the browser and the instance; the
	// --tls-* files then serve only the ADS stream and the admin API.
	Ingress bool `yaml:"-"`
	// ProxyProtocol (ingress only) starts each upstream connection with a
	// PROXY protocol v2 header carrying the client's address (see
	// edge.ProxyProtocolListener), so that the instances' per-address
	// limits, logs and spans see the client, not the edge.
	ProxyProtocol bool `yaml:"-"`
	// UpstreamSource (ingress only), if valid, is the local address the
	// edge dials the instances from: the address they trust for the
	// header (--proxy-protocol-from) and that nothing else uses.
	UpstreamSource netip.Addr `yaml:"-"`

	// metricsListener labels every metric with listener=<value> (the edge
	// runs one proxy per public listener on one registry).
	metricsListener string
}

// DefaultConfig returns the defaults documented on each Config field.
func DefaultConfig() Config {
	return Config{
		NodeID:          "sidecar",
		NodeCluster:     "hachat-sidecar",
		XDS:             "127.0.0.1:7200",
		Listen:          "127.0.0.1:7301",
		Listener:        "chatcore-sidecar",
		Admin:           "127.0.0.1:7302",
		BreakerFailures: 3,
		BreakerOpen:     time.Second,
		ConnectAttempts: 3,
		ADSBackoffMax:   2 * time.Second,
	}
}

// RegisterFlags binds the config fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "xDS node id of this sidecar")
	fs.StringVar(&c.NodeCluster, "node-cluster", c.NodeCluster, "xDS node cluster of this sidecar")
	fs.StringVar(&c.XDS, "xds", c.XDS, "control plane ADS addresses (host:port[,host:port...]); the sidecar moves to the next when one is lost")
	fs.StringVar(&c.XDSCache, "xds-cache", c.XDSCache, "file keeping the last accepted xDS configuration, used at start when no control plane answers (empty: none)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "data listener address; clients connect here")
	fs.StringVar(&c.Listener, "listener", c.Listener, "LDS listener whose tcp_proxy cluster this sidecar serves (empty: the only one)")
	fs.StringVar(&c.Admin, "admin", c.Admin, "admin HTTP address (/proxy/v1/clusters, /healthz, /metrics); empty disables")
	fs.Func("breaker-failures", "consecutive connect failures that open a host's breaker (default "+strconv.Itoa(int(c.BreakerFailures))+")", func(s string) error {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("bad breaker-failures %q: %w", s, err)
		}
		c.BreakerFailures = uint32(n)
		return nil
	})
	fs.DurationVar(&c.BreakerOpen, "breaker-open", c.BreakerOpen, "how long an open breaker rejects connects before a half-open probe")
	fs.IntVar(&c.ConnectAttempts, "connect-attempts", c.ConnectAttempts, "upstream hosts a new connection tries before giving up")
	fs.DurationVar(&c.ADSBackoffMax, "ads-backoff-max", c.ADSBackoffMax, "cap of the reconnect backoff to the control plane")
	fs.StringVar(&c.TLS.CA, "tls-ca", c.TLS.CA, "mTLS: the cluster CA bundle (ca.pem of hachat certs init); with --tls-cert and --tls-key turns mTLS on")
	fs.StringVar(&c.TLS.Cert, "tls-cert", c.TLS.Cert, "mTLS: the sidecar's certificate (SPIFFE ID spiffe://<td>/proxy/<name>)")
	fs.StringVar(&c.TLS.Key, "tls-key", c.TLS.Key, "mTLS: the sidecar's private key")
}

// XDSServers returns the control plane addresses of XDS, in order, blanks
// dropped.
func (c Config) XDSServers() []string {
	var out []string
	for _, a := range strings.Split(c.XDS, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// ErrConfig marks a configuration the sidecar cannot run with.
var ErrConfig = errors.New("bad proxy config")

// validate checks the fields every sidecar needs; static reports whether the
// sidecar runs from static resources (no control plane).
func (c Config) validate(static bool) error {
	if !static {
		if c.NodeID == "" {
			return fmt.Errorf("%w: node-id is empty", ErrConfig)
		}
		servers := c.XDSServers()
		if len(servers) == 0 {
			return fmt.Errorf("%w: xds is empty", ErrConfig)
		}
		for i, addr := range servers {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return fmt.Errorf("%w: xds %q: %v", ErrConfig, addr, err)
			}
			if slices.Contains(servers[:i], addr) {
				return fmt.Errorf("%w: xds %q given twice", ErrConfig, addr)
			}
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("%w: listen %q: %v", ErrConfig, c.Listen, err)
	}
	if c.Admin != "" {
		if _, _, err := net.SplitHostPort(c.Admin); err != nil {
			return fmt.Errorf("%w: admin %q: %v", ErrConfig, c.Admin, err)
		}
	}
	if c.BreakerFailures == 0 {
		return fmt.Errorf("%w: breaker-failures must be at least 1", ErrConfig)
	}
	if c.BreakerOpen <= 0 {
		return fmt.Errorf("%w: breaker-open must be positive", ErrConfig)
	}
	if c.ConnectAttempts < 1 {
		return fmt.Errorf("%w: connect-attempts must be at least 1", ErrConfig)
	}
	if c.ADSBackoffMax <= 0 {
		return fmt.Errorf("%w: ads-backoff-max must be positive", ErrConfig)
	}
	if err := c.TLS.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return nil
}
