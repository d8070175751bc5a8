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
	"github.com/hachat/hachat/webapi"
)

// webapiFile is the configuration of `hachat webapi`: webapi's keys at the
// top level, the chat client's retry keys beside them, telemetry under
// telemetry.
type webapiFile struct {
	webapi.Config `yaml:",inline"`
	// CoreRetryFor and CoreAttemptTimeout tune the chat client (see
	// chatclient.Config); zero keeps its defaults.
	CoreRetryFor       time.Duration    `yaml:"core-retry-for"`
	CoreAttemptTimeout time.Duration    `yaml:"core-attempt-timeout"`
	Telemetry          telemetry.Config `yaml:"telemetry"`
}

// runWebAPI runs the Web API Server until ctx is done.
func runWebAPI(ctx context.Context, args []string, out, errw io.Writer) error {
	cc := chatclient.DefaultConfig()
	file := webapiFile{Config: webapi.DefaultConfig(), CoreRetryFor: cc.RetryFor, CoreAttemptTimeout: cc.AttemptTimeout, Telemetry: telemetry.DefaultConfig()}
	err := parseFlags("webapi", "Run the Web API Server: the customer chat API (Genesys GMS Chat API v2 shape) under\n"+
		"/genesys/2/chat/, its Server-Sent Events push channel, and the Chat HA web sample at /.",
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
	tel, err := telemetry.Setup(ctx, file.Telemetry, "webapi", errw)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))
	cc.Targets = targets
	cc.RetryFor = file.CoreRetryFor
	cc.AttemptTimeout = file.CoreAttemptTimeout
	// chatclient dials with the otelgrpc client handler built from tel, so
	// every call carries the HTTP request's trace context to the core.
	client, err := chatclient.New(cc, tel)
	if err != nil {
		return err
	}
	defer client.Close()
	srv, err := webapi.New(file.Config, client, tel)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "hachat webapi: http://%s/ (core %s)\n", file.HTTP, strings.Join(targets, ","))
	return srv.Run(ctx)
}
