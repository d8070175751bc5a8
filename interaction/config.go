package interaction

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config configures the Interaction Server. The yaml tags are the flag names.
type Config struct {
	// HTTP is the address of the agent API, the agent desktop page, /metrics
	// and /healthz (default 127.0.0.1:8081).
	HTTP string `yaml:"http"`
	// Core is the gRPC address of the chat core, normally the local sidecar's
	// listener (default 127.0.0.1:7311, the demo's interaction sidecar). Only
	// cmd/hachat dials it; the Server itself takes a chatpb.ChatClient.
	Core string `yaml:"core"`
	// ServiceToken is the chat core's service token, which WatchSessions and
	// Join require (default empty: the core must be configured without one).
	ServiceToken string `yaml:"service-token"`
	// OfferTimeout is how long an agent has to accept an offered chat before it
	// goes back to the queue and is offered to the next agent (default 15s).
	OfferTimeout time.Duration `yaml:"offer-timeout"`
	// MaxChatsPerAgent is how many chats one agent holds at most, counting
	// chats being transferred to them and a pending offer (default 3).
	MaxChatsPerAgent int `yaml:"max-chats-per-agent"`
	// MaxQueue caps the chats waiting for an agent (default 500). A new chat
	// that finds the queue full is not queued: it is told "no agent is
	// available" (a Notice with noticeType noAgentAvailable) and closed, so
	// that a flood of chats never waits in front of real customers. 0 lifts
	// the cap.
	MaxQueue int `yaml:"max-queue"`
}

// DefaultConfig returns the defaults documented on each Config field.
func DefaultConfig() Config {
	return Config{
		HTTP:             "127.0.0.1:8081",
		Core:             "127.0.0.1:7311",
		OfferTimeout:     15 * time.Second,
		MaxChatsPerAgent: 3,
		MaxQueue:         500, // Genesys's sizing of one Chat Server: 500 sessions
	}
}

// RegisterFlags binds the config fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTP, "http", c.HTTP, "address of the agent API and the agent desktop (/agent)")
	fs.StringVar(&c.Core, "core", c.Core, "gRPC address of the chat core (normally the local sidecar)")
	fs.StringVar(&c.ServiceToken, "service-token", c.ServiceToken, "chat core service token for WatchSessions and Join")
	fs.DurationVar(&c.OfferTimeout, "offer-timeout", c.OfferTimeout, "time an agent has to accept an offered chat")
	fs.IntVar(&c.MaxChatsPerAgent, "max-chats-per-agent", c.MaxChatsPerAgent, "most chats one agent holds at once")
	fs.IntVar(&c.MaxQueue, "max-queue", c.MaxQueue, "most chats waiting for an agent; a new chat over it is told no agent is available and closed (0: no cap)")
}

// Validate reports the first unusable setting.
func (c Config) Validate() error {
	var errs []error
	if c.OfferTimeout <= 0 {
		errs = append(errs, fmt.Errorf("offer-timeout must be positive, got %s", c.OfferTimeout))
	}
	if c.MaxChatsPerAgent < 1 {
		errs = append(errs, fmt.Errorf("max-chats-per-agent must be at least 1, got %d", c.MaxChatsPerAgent))
	}
	if c.MaxQueue < 0 {
		errs = append(errs, fmt.Errorf("max-queue must not be negative, got %d", c.MaxQueue))
	}
	if c.HTTP == "" {
		errs = append(errs, errors.New("http address is empty"))
	}
	return errors.Join(errs...)
}
