package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hachat/hachat/chatcore"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/ucsmock"
)

// coreFile is the configuration of `hachat core`: the --config YAML file has
// chatcore's keys (Genesys names such as transcript-auto-save) at the top
// level, plus ucs, and the telemetry keys under telemetry.
type coreFile struct {
	chatcore.Config `yaml:",inline"`
	// UCS is the base URL of ucsmock (transcripts and epochs).
	UCS       string           `yaml:"ucs"`
	Telemetry telemetry.Config `yaml:"telemetry"`
}

// runCore runs one chat core until ctx is done.
func runCore(ctx context.Context, args []string, out, errw io.Writer) error {
	file := coreFile{Config: chatcore.DefaultConfig(), UCS: "http://127.0.0.1:7080", Telemetry: telemetry.DefaultConfig()}
	err := parseFlags("core", "Run a chat core: sessions, event logs, transcript saves to UCS, primary/backup role.\n"+
		"Options keep their Genesys names (transcript-auto-save, session-restoration-mode, ...).",
		args, errw, &file, func(fs *flag.FlagSet) {
			file.Config.RegisterFlags(fs)
			fs.StringVar(&file.UCS, "ucs", file.UCS, "base URL of ucsmock (transcripts, epochs)")
			file.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, file.Telemetry, "core", errw)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))
	store := ucsmock.NewClient(file.UCS, &http.Client{Timeout: 10 * time.Second}, tel)
	core, err := chatcore.New(file.Config, store, tel)
	if err != nil {
		return err
	}
	return core.Run(ctx)
}
