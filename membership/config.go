package membership

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrBadConfig reports a Config that cannot work; nothing was started.
var ErrBadConfig = errors.New("bad membership config")

// Config is the gossip configuration of one member. The yaml keys are the
// flag names; Name has neither, the subcommand sets it from its own --name.
type Config struct {
	// Name is the node name, unique in the cluster (required).
	Name string `yaml:"-"`
	// BindAddr is the gossip address, host:port, used for UDP and TCP and
	// advertised to the others. Port 0 picks a free port (tests).
	// Default 127.0.0.1:7946.
	BindAddr string `yaml:"gossip-bind"`
	// AdvertiseAddr, when set, is the gossip address (IP:port) announced to
	// the other members instead of BindAddr: the pod IP in Kubernetes, where
	// a member binds 0.0.0.0 and others dial the pod's address. With it,
	// BindAddr may be unspecified (0.0.0.0 or [::]). Default empty: BindAddr
	// is announced.
	AdvertiseAddr string `yaml:"gossip-advertise"`
	// Join lists the gossip addresses of seed members. Unreachable seeds are
	// retried in the background, so start order does not matter; own address
	// is ignored, so every member may get the same list. Default none.
	Join []string `yaml:"gossip-join"`
	// ProbeInterval is the time between two probes of a random member.
	// Default 200ms (memberlist LAN: 1s): with 2-5 members each one is probed
	// every 0.4-1s.
	ProbeInterval time.Duration `yaml:"gossip-probe-interval"`
	// ProbeTimeout is how long a direct UDP probe waits for its ack before
	// indirect probes start: about the 99th percentile round trip, with room
	// for a busy 2-core machine. Default 100ms (memberlist LAN: 500ms).
	ProbeTimeout time.Duration `yaml:"gossip-probe-timeout"`
	// SuspicionMult scales how long a suspect may refute before it is
	// declared dead: SuspicionMult * max(1, log10(members)) * ProbeInterval.
	// Default 2, that is 400ms for up to 10 members (memberlist LAN: 4).
	// At 2 memberlist waits for no peer confirmations, so a suspect dies on
	// the minimum timeout.
	SuspicionMult int `yaml:"gossip-suspicion-mult"`
	// GossipInterval is the time between gossip rounds that spread meta
	// updates, suspicions and deaths to 3 random members. Rounds with nothing
	// to send cost nothing, and an update is sent about 4 times, so a short
	// interval is cheap: a promotion reaches the others in about 12ms median
	// (30ms at 50ms). Default 20ms (memberlist LAN: 200ms).
	GossipInterval time.Duration `yaml:"gossip-interval"`
	// IndirectChecks is how many members are asked to probe a member that
	// missed a direct probe, so that one cut link cannot kill a member.
	// Default 3 (memberlist LAN: 3).
	IndirectChecks int `yaml:"gossip-indirect-checks"`
	// EncryptKey, when set, is the base64 AES key (16, 24 or 32 bytes) that
	// encrypts and authenticates all gossip; members with another key (or
	// none) cannot join. Default empty: no encryption.
	EncryptKey string `yaml:"gossip-key"`
	// ExtraKeys are more base64 keys this member accepts (decrypts) but
	// does not encrypt with: the keyring during a rotation (see
	// docs/security.md: add the new key here everywhere, then make it
	// gossip-key everywhere with the old one here, then drop the old one).
	// Default empty.
	ExtraKeys []string `yaml:"gossip-keys"`

	// base, when set (tests), replaces memberlist.DefaultLANConfig as the
	// starting point before the fields above are applied.
	base func() *memberlist.Config
	// transport, when set (tests), supplies the memberlist transport, e.g. a
	// NetTransport that drops traffic to chosen peers.
	transport func() (memberlist.Transport, error)
}

// DefaultConfig returns the defaults documented on each Config field: tuned
// for fast failure detection on a LAN or on loopback. A kill -9 or a SIGSTOP
// of one member of three is declared dead after about 0.5-1s (see
// docs/membership.md for measurements), against 5-7s with memberlist's own
// DefaultLANConfig.
func DefaultConfig() Config {
	return Config{
		BindAddr:       "127.0.0.1:7946",
		ProbeInterval:  200 * time.Millisecond,
		ProbeTimeout:   100 * time.Millisecond,
		SuspicionMult:  2,
		GossipInterval: 20 * time.Millisecond,
		IndirectChecks: 3,
	}
}

// RegisterFlags binds the fields (but Name) to gossip-* flags on fs: the
// prefix keeps them apart from the flags of the subcommand that embeds them.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.BindAddr, "gossip-bind", c.BindAddr, "gossip address host:port (UDP and TCP), advertised to the other members")
	fs.StringVar(&c.AdvertiseAddr, "gossip-advertise", c.AdvertiseAddr, "gossip address IP:port announced to the other members (default: the --gossip-bind address; set it when binding 0.0.0.0, e.g. to the pod IP)")
	fs.Func("gossip-join", fmt.Sprintf("comma-separated gossip addresses of seed members, retried until one answers (default %q)", strings.Join(c.Join, ",")), func(s string) error {
		c.Join = splitList(s)
		return nil
	})
	fs.DurationVar(&c.ProbeInterval, "gossip-probe-interval", c.ProbeInterval, "time between failure-detector probes")
	fs.DurationVar(&c.ProbeTimeout, "gossip-probe-timeout", c.ProbeTimeout, "wait for a direct probe ack before indirect probes")
	fs.IntVar(&c.SuspicionMult, "gossip-suspicion-mult", c.SuspicionMult, "suspicion timeout = mult * max(1, log10(members)) * probe interval")
	fs.DurationVar(&c.GossipInterval, "gossip-interval", c.GossipInterval, "time between gossip rounds (meta updates, deaths)")
	fs.IntVar(&c.IndirectChecks, "gossip-indirect-checks", c.IndirectChecks, "members asked to probe a member that missed a direct probe")
	fs.StringVar(&c.EncryptKey, "gossip-key", c.EncryptKey, "base64 AES key (16, 24 or 32 bytes) encrypting gossip; empty: no encryption")
	fs.Func("gossip-keys", "comma-separated base64 keys also accepted from other members (keyring rotation); need --gossip-key", func(s string) error {
		c.ExtraKeys = splitList(s)
		return nil
	})
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Validate reports the first problem in c, wrapped in ErrBadConfig.
func (c Config) Validate() error {
	if _, err := c.memberlistConfig(); err != nil {
		return err
	}
	return nil
}

// decodeKey parses the base64 gossip key.
func decodeKey(k string) ([]byte, error) {
	if k == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(k))
	if err != nil {
		return nil, fmt.Errorf("%w: gossip-key is not valid base64: %w", ErrBadConfig, err)
	}
	switch len(b) {
	case 16, 24, 32:
		return b, nil
	}
	return nil, fmt.Errorf("%w: gossip-key decodes to %d bytes: want 16, 24 or 32 (AES-128/192/256)", ErrBadConfig, len(b))
}

// memberlistConfig builds the memberlist configuration: DefaultLANConfig (or
// the test base) with our fields applied. Delegates and logger are set by New.
func (c Config) memberlistConfig() (*memberlist.Config, error) {
	if c.Name == "" {
		return nil, fmt.Errorf("%w: node name is required", ErrBadConfig)
	}
	host, portStr, err := net.SplitHostPort(c.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: gossip-bind %q: %w", ErrBadConfig, c.BindAddr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("%w: gossip-bind %q: host must be an IP address", ErrBadConfig, c.BindAddr)
	}
	if ip.IsUnspecified() && c.AdvertiseAddr == "" {
		return nil, fmt.Errorf("%w: gossip-bind %q: bind a concrete address, it is also the advertised one (or set gossip-advertise)", ErrBadConfig, c.BindAddr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: gossip-bind %q: port must be 0-65535", ErrBadConfig, c.BindAddr)
	}
	advIP, advPort := "", port
	if c.AdvertiseAddr != "" {
		h, p, err := SplitAdvertise(c.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("%w: gossip-advertise: %w", ErrBadConfig, err)
		}
		advIP, advPort = h, p
	}
	for _, s := range c.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("%w: gossip-join %q: want host:port: %w", ErrBadConfig, s, err)
		}
	}
	switch {
	case c.ProbeInterval <= 0:
		return nil, fmt.Errorf("%w: gossip-probe-interval must be positive, got %v", ErrBadConfig, c.ProbeInterval)
	case c.ProbeTimeout <= 0 || c.ProbeTimeout >= c.ProbeInterval:
		return nil, fmt.Errorf("%w: gossip-probe-timeout must be positive and below the probe interval (%v), got %v", ErrBadConfig, c.ProbeInterval, c.ProbeTimeout)
	case c.SuspicionMult < 1:
		return nil, fmt.Errorf("%w: gossip-suspicion-mult must be at least 1, got %d", ErrBadConfig, c.SuspicionMult)
	case c.GossipInterval <= 0:
		return nil, fmt.Errorf("%w: gossip-interval must be positive, got %v", ErrBadConfig, c.GossipInterval)
	case c.IndirectChecks < 0:
		return nil, fmt.Errorf("%w: gossip-indirect-checks must not be negative, got %d", ErrBadConfig, c.IndirectChecks)
	}
	key, err := decodeKey(c.EncryptKey)
	if err != nil {
		return nil, err
	}
	var extra [][]byte
	for _, k := range c.ExtraKeys {
		b, err := decodeKey(k)
		if err != nil {
			return nil, fmt.Errorf("gossip-keys: %w", err)
		}
		extra = append(extra, b)
	}
	if len(extra) > 0 && key == nil {
		return nil, fmt.Errorf("%w: gossip-keys need a gossip-key to encrypt with", ErrBadConfig)
	}

	base := memberlist.DefaultLANConfig
	if c.base != nil {
		base = c.base
	}
	mc := base()
	mc.Name = c.Name
	mc.BindAddr = ip.String()
	mc.BindPort = port
	// Advertise the bound address and port (the port chosen when it was 0),
	// or gossip-advertise when set.
	mc.AdvertiseAddr = advIP
	mc.AdvertisePort = advPort
	if c.base == nil {
		// Tuned for a LAN or loopback; the reasons are on the Config fields.
		mc.ProbeInterval = c.ProbeInterval
		mc.ProbeTimeout = c.ProbeTimeout
		mc.SuspicionMult = c.SuspicionMult
		mc.GossipInterval = c.GossipInterval
		mc.IndirectChecks = c.IndirectChecks
		// A join or push/pull stream to a live peer on a LAN takes
		// milliseconds; a second keeps a dead seed from stalling joins.
		mc.TCPTimeout = time.Second
		// Full state syncs repair anything gossip missed (a healed
		// partition); with a handful of members they are cheap.
		mc.PushPullInterval = 10 * time.Second
		// A restarted member may come back on another port (tests, or a
		// container with a new address): let it reclaim its name soon.
		mc.DeadNodeReclaimTime = time.Second
	}
	mc.SecretKey = key
	if len(extra) > 0 {
		kr, err := memberlist.NewKeyring(extra, key)
		if err != nil {
			return nil, fmt.Errorf("%w: gossip keyring: %w", ErrBadConfig, err)
		}
		mc.Keyring = kr
	}
	if key != nil {
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	return mc, nil
}
