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
	// RetryBudget is deprecated and ignored: webapi no longer retries on
	// top of the chat client, whose one policy (core-retry-for,
	// core-attempt-timeout, core-min-backoff, core-max-backoff,
	// core-max-attempts) decides every retry. It is still read, so that
	// existing configurations load; New warns when it is set.
	RetryBudget time.Duration `yaml:"retry-budget"`
	// CoreTimeout bounds one call to the core, the chat client's retries
	// included: a core that stays unavailable longer is answered statusCode 1
	// (send the same request again).
	CoreTimeout time.Duration `yaml:"core-timeout"`
	// ClientStartRate is the sustained rate of chat starts one client
	// address may make, per second (IPv6: one /64); ClientStartBurst is how
	// many it may make at once. Over it a start is answered 429 with
	// Retry-After. A rate of 0 lifts the per-client limit.
	ClientStartRate  float64 `yaml:"client-start-rate"`
	ClientStartBurst int     `yaml:"client-start-burst"`
	// StartRate and StartBurst limit the chat starts of all clients
	// together, per second and at once (429 with Retry-After over it). A
	// rate of 0 lifts the overall limit.
	StartRate  float64 `yaml:"start-rate"`
	StartBurst int     `yaml:"start-burst"`
	// AllowedOrigins is the comma-separated allow-list of the web origins
	// (scheme://host[:port]) whose pages may call the customer API from
	// another site, e.g. the company site that embeds the chat. A request or
	// preflight from any other site gets 403 and no CORS header. Empty (the
	// default) allows no other site; the web sample at / is same-origin and
	// needs no entry.
	AllowedOrigins string `yaml:"allowed-origins"`
	// TrustedProxies is the comma-separated list of addresses and CIDR
	// prefixes of the load balancers in front of webapi whose
	// X-Forwarded-For names the client; empty (the default) trusts none and
	// takes the TCP peer as the client. Set it behind a load balancer, or
	// every customer shares one start limit.
	TrustedProxies string `yaml:"trusted-proxies"`
	// APIKey, when set, is the key every customer API request must carry in
	// its apikey header (as GMS checks the apikey its widgets send; the push
	// channel may carry it as the apikey query parameter instead, since a
	// browser's EventSource cannot set headers). A missing or wrong key is
	// answered 401. Empty (the default): the header is accepted and not
	// checked.
	APIKey string `yaml:"api-key"`
}

// DefaultConfig returns the defaults:
//   - http 127.0.0.1:8080 (the demo's webapi port), loopback only;
//   - core 127.0.0.1:7301, the webapi sidecar's listener in the demo;
//   - service "customer-support";
//   - max-body 65536 bytes: sixteen times the core's default 4 KiB message
//     limit, room for a full form with userData;
//   - sse-heartbeat 15s, well under common proxy idle timeouts (60s);
//   - retry-budget 0 (deprecated, ignored);
//   - core-timeout 5s, more than the 250 ms failover target and the 2 s
//     silent-primary target, so a failover shows as latency, not an error;
//   - client-start-rate 0.2/s with client-start-burst 10: a customer who
//     reloads the page a few times never meets the limit, one address cannot
//     start more than 10 chats at once and 12 a minute after that (the
//     flood in issue 7 started 10,000 in 47 s);
//   - start-rate 100/s with start-burst 200: about the pace at which
//     Genesys's sizing (500 sessions, 50 messages/s per Chat Server) would
//     fill twenty chat servers in a minute, well below the 20000 sessions a
//     core holds (max-sessions);
//   - allowed-origins empty: no other site may call the API;
//   - trusted-proxies empty: the TCP peer is the client;
//   - api-key empty: an apikey header is accepted and not checked.
func DefaultConfig() Config {
	return Config{
		HTTP:         "127.0.0.1:8080",
		Core:         "127.0.0.1:7301",
		Service:      "customer-support",
		MaxBody:      64 << 10,
		SSEHeartbeat: 15 * time.Second,
		CoreTimeout:  5 * time.Second,

		ClientStartRate:  0.2,
		ClientStartBurst: 10,
		StartRate:        100,
		StartBurst:       200,
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
	fs.DurationVar(&c.RetryBudget, "retry-budget", c.RetryBudget, "deprecated, ignored: the chat client's --core-retry-for, --core-max-attempts and backoff flags rule retries")
	fs.DurationVar(&c.CoreTimeout, "core-timeout", c.CoreTimeout, "deadline of one call to the chat core, the chat client's retries included")
	fs.Float64Var(&c.ClientStartRate, "client-start-rate", c.ClientStartRate, "chat starts per second one client address may make (0: no per-client limit)")
	fs.IntVar(&c.ClientStartBurst, "client-start-burst", c.ClientStartBurst, "chat starts one client address may make at once")
	fs.Float64Var(&c.StartRate, "start-rate", c.StartRate, "chat starts per second of all clients together (0: no overall limit)")
	fs.IntVar(&c.StartBurst, "start-burst", c.StartBurst, "chat starts all clients together may make at once")
	fs.StringVar(&c.AllowedOrigins, "allowed-origins", c.AllowedOrigins, "comma-separated origins (scheme://host[:port]) whose pages may call the API cross-site; others get 403")
	fs.StringVar(&c.APIKey, "api-key", c.APIKey, "key the apikey header of every customer API request must carry (empty: not checked); prefer HACHAT_API_KEY to keep it out of ps")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", c.TrustedProxies, "comma-separated addresses or CIDRs of load balancers whose X-Forwarded-For names the client")
}
