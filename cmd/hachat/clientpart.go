package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/telemetry"
)

// clientFile holds the keys that webapi and interaction share: how their
// chat client retries, and telemetry.
type clientFile struct {
	// CoreRetryFor and CoreAttemptTimeout tune the chat client (see
	// chatclient.Config).
	CoreRetryFor       time.Duration    `yaml:"core-retry-for"`
	CoreAttemptTimeout time.Duration    `yaml:"core-attempt-timeout"`
	Telemetry          telemetry.Config `yaml:"telemetry"`
}

func defaultClientFile() clientFile {
	cc := chatclient.DefaultConfig()
	return clientFile{CoreRetryFor: cc.RetryFor, CoreAttemptTimeout: cc.AttemptTimeout, Telemetry: telemetry.DefaultConfig()}
}

func (f *clientFile) registerFlags(fs *flag.FlagSet) {
	fs.DurationVar(&f.CoreRetryFor, "core-retry-for", f.CoreRetryFor, "how long the chat client retries a call to the chat core")
	fs.DurationVar(&f.CoreAttemptTimeout, "core-attempt-timeout", f.CoreAttemptTimeout, "timeout of one attempt of a call to the chat core")
	f.Telemetry.RegisterFlags(fs)
}

// clientPart is what a part that talks to the chat core starts with.
type clientPart struct {
	tel     *telemetry.Telemetry
	client  *chatclient.Client
	targets []string
}

// startClientPart sets up telemetry and the chat client for the part called
// name, whose --core flag is core (comma-separated addresses). The chat
// client dials with the otelgrpc client handler built from the telemetry, so
// every call carries the HTTP request's trace context to the core.
func startClientPart(ctx context.Context, name, core string, f clientFile, errw io.Writer) (*clientPart, error) {
	var targets []string
	for _, t := range strings.Split(core, ",") {
		if t = strings.TrimSpace(t); t != "" {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return nil, errors.New("--core: no chat core address")
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, name, errw)
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	cc := chatclient.DefaultConfig()
	cc.Targets = targets
	cc.RetryFor = f.CoreRetryFor
	cc.AttemptTimeout = f.CoreAttemptTimeout
	client, err := chatclient.New(cc, tel)
	if err != nil {
		_ = tel.Shutdown(context.WithoutCancel(ctx))
		return nil, err
	}
	return &clientPart{tel: tel, client: client, targets: targets}, nil
}

// close closes the client and flushes the spans.
func (p *clientPart) close(ctx context.Context) {
	p.client.Close()
	_ = p.tel.Shutdown(context.WithoutCancel(ctx))
}
