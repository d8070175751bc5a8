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
	"github.com/hachat/hachat/interaction"
	"github.com/hachat/hachat/telemetry"
)

// interactionFile is the configuration of `hachat interaction`: the
// Interaction Server's keys at the top level, the chat client's retry keys
// beside them, telemetry under telemetry.
type interactionFile struct {
	interaction.Config `yaml:",inline"`
	// CoreRetryFor and CoreAttemptTimeout tune the chat client (see
	// chatclient.Config).
	CoreRetryFor       time.Duration    `yaml:"core-retry-for"`
	CoreAttemptTimeout time.Duration    `yaml:"core-attempt-timeout"`
	Telemetry          telemetry.Config `yaml:"telemetry"`
}

// runInteraction runs the Interaction Server until ctx is done.
func runInteraction(ctx context.Context, args []string, out, errw io.Writer) error {
	cc := chatclient.DefaultConfig()
	file := interactionFile{Config: interaction.DefaultConfig(), CoreRetryFor: cc.RetryFor,
		CoreAttemptTimeout: cc.AttemptTimeout, Telemetry: telemetry.DefaultConfig()}
	err := parseFlags("interaction", "Run the Interaction Server: the agent queue (new chats are offered to the ready agent\n"+
		"idle longest), the agent API under /agent/v1/, its Server-Sent Events push channel, and\n"+
		"the agent desktop at /agent. --core may list several addresses, comma-separated.",
		args, errw, &file, func(fs *flag.FlagSet) {
			file.Config.RegisterFlags(fs)
			fs.DurationVar(&file.CoreRetryFor, "core-retry-for", file.CoreRetryFor, "how long the chat client retries a call to the chat core")
			fs.DurationVar(&file.CoreAttemptTimeout, "core-attempt-timeout", file.CoreAttemptTimeout, "timeout of one attempt of a call to the chat core")
			file.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	var targets []string
	for _, t := range strings.Split(file.Core, ",") {
		if t = strings.TrimSpace(t); t != "" {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return errors.New("--core: no chat core address")
	}
	tel, err := telemetry.Setup(ctx, file.Telemetry, "interaction", errw)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))
	cc.Targets = targets
	cc.RetryFor = file.CoreRetryFor
	cc.AttemptTimeout = file.CoreAttemptTimeout
	// chatclient dials with the otelgrpc client handler built from tel, so a
	// reply's trace runs from the agent API through to the core.
	client, err := chatclient.New(cc, tel)
	if err != nil {
		return err
	}
	defer client.Close()
	srv, err := interaction.New(file.Config, client, tel)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "hachat interaction: http://%s/agent (core %s)\n", file.HTTP, strings.Join(targets, ","))
	return srv.Run(ctx)
}
