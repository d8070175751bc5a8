package xds

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/mtls"
)

// ErrBadConfig reports a configuration that cannot produce valid resources.
var ErrBadConfig = errors.New("bad xds config")

// Config is the control plane's configuration. The yaml tags are the flag
// names.
type Config struct {
	// GRPC is the address the xDS gRPC services (ADS and the per-type
	// discovery services) listen on. Default 127.0.0.1:7200.
	GRPC string `yaml:"grpc"`
	// HTTP is the admin HTTP address (status, switchover, /healthz,
	// /metrics). Default 127.0.0.1:7201.
	HTTP string `yaml:"http"`
	// GRPCAdvertise and HTTPAdvertise, when set, are the addresses (IP:port)
	// the control plane announces in its gossip meta instead of the bound
	// ones: the cores ask the witness at the announced HTTP address. Needed
	// when binding 0.0.0.0 (Kubernetes: the pod IP). Default empty.
	GRPCAdvertise string `yaml:"grpc-advertise"`
	HTTPAdvertise string `yaml:"http-advertise"`
	// AdminToken guards the mutating admin routes (switchover, test
	// faults) and is passed on to the cores' Switchover RPC. Empty (the
	// default) disables those routes: they answer 403.
	AdminToken string `yaml:"admin-token"`
	// HealthInterval is the active gRPC health check interval published in
	// the chatcore cluster. Default 25ms: a sidecar learns of a planned
	// switchover (the old primary answers as backup, the new one as primary)
	// within one interval even when the xDS push is slower (gossip); a check
	// is one small Status call per core, so 40 calls/s per core per sidecar.
	HealthInterval time.Duration `yaml:"health-interval"`
	// HealthTimeout is the time a health check may take before it counts
	// as failed. Default 100ms.
	HealthTimeout time.Duration `yaml:"health-timeout"`
	// UnhealthyThreshold is the number of failed checks in a row that
	// mark a host unhealthy. Default 2.
	UnhealthyThreshold uint32 `yaml:"unhealthy-threshold"`
	// HealthyThreshold is the number of passed checks in a row that mark a
	// host healthy again. Default 1.
	HealthyThreshold uint32 `yaml:"healthy-threshold"`
	// ConnectTimeout is the upstream connect timeout of the chatcore
	// cluster. Default 500ms: on a LAN a connect either succeeds in well
	// under a millisecond or is refused at once; the timeout only matters
	// for a host that silently drops packets.
	ConnectTimeout time.Duration `yaml:"connect-timeout"`
	// ListenerPort is the port of the sidecar listener chatcore-sidecar on
	// 127.0.0.1. Default 7301. The hachat sidecar binds its own --listen
	// address instead; Envoy binds this one.
	ListenerPort uint32 `yaml:"listener-port"`
	// TLS names the control plane's certificate files (tls-ca, tls-cert,
	// tls-key; see package mtls). Set, the xDS gRPC server and the admin
	// API speak mTLS only, the switchover call to a core is mTLS, and the
	// published resources carry TLS (TrustDomain). Unset (the default),
	// everything is plaintext.
	TLS mtls.Files `yaml:",inline"`
	// TrustDomain is the SPIFFE trust domain of the cores. Set, the chat
	// cluster carries an UpstreamTlsContext requiring a peer URI SAN
	// spiffe://<TrustDomain>/core/. New sets it from the control plane's
	// own certificate when TLS is on; Build takes it as given.
	TrustDomain string `yaml:"-"`
	// IngressCustomer, set, publishes the edge's customer listener
	// (ingress-customer, this address, to the cluster webapi of the
	// gossip members of kind webapi) and IngressAgent the agents'
	// (ingress-agent, to interaction). The hachat edge binds its own
	// addresses (hachat proxy --ingress); Envoy binds these. Empty (the
	// default): no ingress resources.
	IngressCustomer string `yaml:"ingress-customer"`
	IngressAgent    string `yaml:"ingress-agent"`
	// PairPoll is how often the control plane asks each pair's primary
	// for its live sessions, the input of placement (default 250ms).
	PairPoll time.Duration `yaml:"pair-poll"`
	// PairCapacity is the live sessions one pair holds: a pair at it
	// takes no new chat (default 20000, the cores' default max-sessions).
	PairCapacity uint64 `yaml:"pair-capacity"`
	// AdoptGrace is how long a pair may have no primary of its own (both
	// its cores lost) before the control plane assigns it to an adopting
	// pair (N+1, default 10s; 0 turns adoption off). It must be well above
	// the time a pair's own backup needs to take over (a few epoch
	// leases): the adopter restores from UCS, which may hold less than the
	// backup's replica (an adopter also refuses while gossip shows a core
	// of the pair alive).
	AdoptGrace time.Duration `yaml:"adopt-grace"`
}

// DefaultConfig returns the defaults documented on each Config field.
func DefaultConfig() Config {
	return Config{
		GRPC:               "127.0.0.1:7200",
		HTTP:               "127.0.0.1:7201",
		HealthInterval:     25 * time.Millisecond,
		HealthTimeout:      100 * time.Millisecond,
		UnhealthyThreshold: 2,
		HealthyThreshold:   1,
		ConnectTimeout:     500 * time.Millisecond,
		ListenerPort:       7301,
		PairPoll:           250 * time.Millisecond,
		PairCapacity:       DefaultPairCapacity,
		AdoptGrace:         10 * time.Second,
	}
}

// RegisterFlags binds the config fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.GRPC, "grpc", c.GRPC, "xDS gRPC address (ADS and per-type discovery services)")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "admin HTTP address (/xds/v1/status, /xds/v1/switchover, /healthz, /metrics)")
	fs.StringVar(&c.GRPCAdvertise, "grpc-advertise", c.GRPCAdvertise, "xDS gRPC address IP:port announced to the gossip members; default: the bound --grpc address")
	fs.StringVar(&c.HTTPAdvertise, "http-advertise", c.HTTPAdvertise, "admin HTTP address IP:port announced to the gossip members (the cores' witness); default: the bound --http address")
	fs.StringVar(&c.AdminToken, "admin-token", c.AdminToken, "bearer token for the mutating admin routes; empty disables them")
	fs.DurationVar(&c.HealthInterval, "health-interval", c.HealthInterval, "active gRPC health check interval published in the chatcore cluster")
	fs.DurationVar(&c.HealthTimeout, "health-timeout", c.HealthTimeout, "health check timeout")
	fs.Var((*uint32Value)(&c.UnhealthyThreshold), "unhealthy-threshold", "failed checks in a row that mark a host unhealthy")
	fs.Var((*uint32Value)(&c.HealthyThreshold), "healthy-threshold", "passed checks in a row that mark a host healthy")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "upstream connect timeout of the chatcore cluster")
	fs.StringVar(&c.TLS.CA, "tls-ca", c.TLS.CA, "mTLS: the cluster CA bundle (ca.pem of hachat certs init); with --tls-cert and --tls-key turns mTLS on")
	fs.StringVar(&c.TLS.Cert, "tls-cert", c.TLS.Cert, "mTLS: the control plane's certificate (SPIFFE ID spiffe://<td>/xds/<name>)")
	fs.StringVar(&c.TLS.Key, "tls-key", c.TLS.Key, "mTLS: the control plane's private key")
	fs.StringVar(&c.IngressCustomer, "ingress-customer", c.IngressCustomer, "publish the edge's customer listener at this IP:port, to the webapi instances (empty: no ingress)")
	fs.StringVar(&c.IngressAgent, "ingress-agent", c.IngressAgent, "publish the edge's agent listener at this IP:port, to the interaction instances (empty: none)")
	fs.DurationVar(&c.PairPoll, "pair-poll", c.PairPoll, "how often each pair's primary is asked for its live sessions (placement)")
	fs.DurationVar(&c.AdoptGrace, "adopt-grace", c.AdoptGrace, "a pair without a primary this long (both cores lost) is adopted by the least loaded serving pair, which restores its chats (0: off)")
	fs.Uint64Var(&c.PairCapacity, "pair-capacity", c.PairCapacity, "live sessions one pair holds; a pair at it takes no new chat")
	fs.Var((*uint32Value)(&c.ListenerPort), "listener-port", "port of the chatcore-sidecar listener on 127.0.0.1 (Envoy binds it; the hachat sidecar uses its own --listen)")
}

// Validate reports the first field that cannot work, wrapped in
// ErrBadConfig.
func (c Config) Validate() error {
	for _, a := range []struct{ name, addr string }{{"grpc", c.GRPC}, {"http", c.HTTP}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%w: %s address %q: %v", ErrBadConfig, a.name, a.addr, err)
		}
	}
	for _, a := range []struct{ name, addr string }{{"grpc-advertise", c.GRPCAdvertise}, {"http-advertise", c.HTTPAdvertise}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := membership.SplitAdvertise(a.addr); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBadConfig, a.name, err)
		}
	}
	if err := c.TLS.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadConfig, err)
	}
	if err := c.validateResources(); err != nil {
		return err
	}
	if c.PairPoll <= 0 {
		return fmt.Errorf("%w: pair-poll must be positive, got %v", ErrBadConfig, c.PairPoll)
	}
	if c.AdoptGrace < 0 {
		return fmt.Errorf("%w: adopt-grace must not be negative, got %v", ErrBadConfig, c.AdoptGrace)
	}
	return nil
}

// validateResources checks the fields that go into the published
// resources; Build calls it so that a bad config never reaches a client.
func (c Config) validateResources() error {
	switch {
	case c.HealthInterval <= 0:
		return fmt.Errorf("%w: health-interval must be positive, got %v", ErrBadConfig, c.HealthInterval)
	case c.HealthTimeout <= 0:
		return fmt.Errorf("%w: health-timeout must be positive, got %v", ErrBadConfig, c.HealthTimeout)
	case c.UnhealthyThreshold < 1:
		return fmt.Errorf("%w: unhealthy-threshold must be at least 1", ErrBadConfig)
	case c.HealthyThreshold < 1:
		return fmt.Errorf("%w: healthy-threshold must be at least 1", ErrBadConfig)
	case c.ConnectTimeout <= 0:
		return fmt.Errorf("%w: connect-timeout must be positive, got %v", ErrBadConfig, c.ConnectTimeout)
	case c.ListenerPort < 1 || c.ListenerPort > 65535:
		return fmt.Errorf("%w: listener-port must be 1..65535, got %d", ErrBadConfig, c.ListenerPort)
	}
	for _, a := range []struct{ name, addr string }{{"ingress-customer", c.IngressCustomer}, {"ingress-agent", c.IngressAgent}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := hostPort(a.addr); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrBadConfig, a.name, err)
		}
	}
	if c.IngressAgent != "" && c.IngressCustomer == "" {
		return fmt.Errorf("%w: ingress-agent needs ingress-customer", ErrBadConfig)
	}
	return nil
}

// uint32Value is a flag.Value for a uint32 field.
type uint32Value uint32

func (v *uint32Value) String() string { return strconv.FormatUint(uint64(*v), 10) }

func (v *uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("not a uint32: %w", err)
	}
	*v = uint32Value(n)
	return nil
}
