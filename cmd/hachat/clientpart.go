package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/telemetry"
)

// clientFile holds the keys that webapi and interaction share: how their
// chat client retries (chatclient.Config; the addresses come from the
// part's own core key), and telemetry.
type clientFile struct {
	chatclient.Config `yaml:",inline"`
	Telemetry         telemetry.Config `yaml:"telemetry"`
}

func defaultClientFile() clientFile {
	return clientFile{Config: chatclient.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
}

func (f *clientFile) registerFlags(fs *flag.FlagSet) {
	f.Config.RegisterRetryFlags(fs)
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
	cc := f.Config
	cc.Targets = targets
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
