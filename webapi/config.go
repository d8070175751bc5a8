package webapi

import (
	"flag"
	"time"
)

// Config holds the Web API Server's options. The yaml tags equal the flag
// names, so a --config file and the command line use the same keys.
type Config struct {
	// HTTP is the listen address of the customer API, the push channel, the
	// web sample, /metrics and /healthz.
	HTTP string `yaml:"http"`
	// Core is the gRPC target of the chat core (normally the local sidecar);
	// a comma-separated list names several cores. webapi itself does not dial:
	// the command that wires it does, and passes the client to New.
	Core string `yaml:"core"`
	// Service is the chat service the web sample starts chats on: the
	// {service} segment of POST /genesys/2/chat/{service}. The API accepts any
	// service name; this one is only the sample's default.
	Service string `yaml:"service"`
	// MaxBody caps the size of one request body in bytes; a larger body is
	// answered with HTTP 400 and error code 103 before anything reaches the
	// core.
	MaxBody int64 `yaml:"max-body"`
	// SSEHeartbeat is how often an idle push channel sends a heartbeat event,
	// so that proxies keep it open and the page can tell that it is alive.
	SSEHeartbeat time.Duration `yaml:"sse-heartbeat"`
	// RetryBudget bounds how long one API call keeps retrying a core that
	// answers UNAVAILABLE (not primary, draining, failing over) before the
	// client is told statusCode 1. Zero disables webapi's own retries.
	RetryBudget time.Duration `yaml:"retry-budget"`
	// CoreTimeout bounds one unary call to the core.
	CoreTimeout time.Duration `yaml:"core-timeout"`
}

// DefaultConfig returns the defaults:
//   - http 127.0.0.1:8080 (the demo's webapi port), loopback only;
//   - core 127.0.0.1:7301, the webapi sidecar's listener in the demo;
//   - service "customer-support";
//   - max-body 65536 bytes: sixteen times the core's default 4 KiB message
//     limit, room for a full form with userData;
//   - sse-heartbeat 15s, well under common proxy idle timeouts (60s);
//   - retry-budget 3s, more than the 250 ms failover target and the 2 s
//     silent-primary target, so a failover shows as latency, not an error;
//   - core-timeout 5s.
func DefaultConfig() Config {
	return Config{
		HTTP:         "127.0.0.1:8080",
		Core:         "127.0.0.1:7301",
		Service:      "customer-support",
		MaxBody:      64 << 10,
		SSEHeartbeat: 15 * time.Second,
		RetryBudget:  3 * time.Second,
		CoreTimeout:  5 * time.Second,
	}
}

// RegisterFlags binds the config fields to flags on fs, with the current
// values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTP, "http", c.HTTP, "HTTP listen address (API, push channel, web sample, /metrics, /healthz)")
	fs.StringVar(&c.Core, "core", c.Core, "chat core gRPC target (normally the local sidecar); comma-separated list for several cores")
	fs.StringVar(&c.Service, "service", c.Service, "chat service the web sample starts chats on")
	fs.Int64Var(&c.MaxBody, "max-body", c.MaxBody, "maximum request body size in bytes")
	fs.DurationVar(&c.SSEHeartbeat, "sse-heartbeat", c.SSEHeartbeat, "heartbeat interval of the SSE push channel")
	fs.DurationVar(&c.RetryBudget, "retry-budget", c.RetryBudget, "how long one API call retries an UNAVAILABLE core (0: no retries)")
	fs.DurationVar(&c.CoreTimeout, "core-timeout", c.CoreTimeout, "timeout of one unary call to the chat core")
}
