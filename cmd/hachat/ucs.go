package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// ucsFile is the configuration of `hachat ucs`: the --config YAML file has
// ucsmock's keys at the top level and the telemetry keys under telemetry.
type ucsFile struct {
	ucsmock.Config `yaml:",inline"`
	// TLS turns on mTLS (tls-ca, tls-cert, tls-key): only cores write,
	// cores and operators read, operators reach the admin API.
	TLS       mtls.Files       `yaml:",inline"`
	Telemetry telemetry.Config `yaml:"telemetry"`
}

// runUCS runs ucsmock, the UCS stand-in, until ctx is done.
func runUCS(ctx context.Context, args []string, out, errw io.Writer) error {
	file := ucsFile{Config: ucsmock.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
	err := parseFlags("ucs", "Run ucsmock, the UCS stand-in: transcripts in a bbolt database synced on every save (or in a\n"+
		"PostgreSQL database that several ucs instances share: --store postgres --postgres DSN),\n"+
		"read as JSON or Genesys-like XML, epoch fencing, fault injection over the admin API.",
		args, errw, &file, func(fs *flag.FlagSet) {
			file.Config.RegisterFlags(fs)
			registerTLSFlags(fs, &file.TLS)
			file.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, file.Telemetry, "ucs", errw)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))
	src, err := startTLS(ctx, file.TLS, tel.Logger)
	if err != nil {
		return err
	}
	srv, err := ucsmock.New(file.Config, tel)
	if err != nil {
		return fmt.Errorf("start ucsmock: %w", err)
	}
	if src != nil {
		srv.UseTLS(src)
	}
	return srv.Run(ctx)
}
