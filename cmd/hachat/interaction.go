package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hachat/hachat/interaction"
)

// interactionFile is the configuration of `hachat interaction`: the
// Interaction Server's keys at the top level, the chat client's retry keys
// beside them, telemetry under telemetry.
type interactionFile struct {
	interaction.Config `yaml:",inline"`
	clientFile         `yaml:",inline"`
}

// runInteraction runs the Interaction Server until ctx is done.
func runInteraction(ctx context.Context, args []string, out, errw io.Writer) error {
	file := interactionFile{Config: interaction.DefaultConfig(), clientFile: defaultClientFile()}
	err := parseFlags("interaction", "Run the Interaction Server: the agent queue (new chats are offered to the ready agent\n"+
		"idle longest), the agent API under /agent/v1/, its Server-Sent Events push channel, and\n"+
		"the agent desktop at /agent. --core may list several addresses, comma-separated.",
		args, errw, &file, func(fs *flag.FlagSet) {
			file.Config.RegisterFlags(fs)
			file.clientFile.registerFlags(fs)
		})
	if err != nil {
		return err
	}
	part, err := startClientPart(ctx, "interaction", file.Core, file.clientFile, errw)
	if err != nil {
		return err
	}
	defer part.close(ctx)
	srv, err := interaction.New(file.Config, part.client, part.tel)
	if err != nil {
		return err
	}
	ln, scheme, err := part.listen(ctx, file.HTTP)
	if err != nil {
		return err
	}
	leave, err := file.Register.register(ctx, "interaction", ln.Addr(), part.tel)
	if err != nil {
		ln.Close()
		return err
	}
	defer leave()
	fmt.Fprintf(out, "hachat interaction: %s://%s/agent (core %s)\n", scheme, ln.Addr(), strings.Join(part.targets, ","))
	return srv.Serve(ctx, ln)
}
