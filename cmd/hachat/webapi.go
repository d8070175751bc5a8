package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hachat/hachat/webapi"
)

// webapiFile is the configuration of `hachat webapi`: webapi's keys at the
// top level, the chat client's retry keys beside them, telemetry under
// telemetry.
type webapiFile struct {
	webapi.Config `yaml:",inline"`
	clientFile    `yaml:",inline"`
}

// runWebAPI runs the Web API Server until ctx is done.
func runWebAPI(ctx context.Context, args []string, out, errw io.Writer) error {
	file := webapiFile{Config: webapi.DefaultConfig(), clientFile: defaultClientFile()}
	err := parseFlags("webapi", "Run the Web API Server: the customer chat API (Genesys GMS Chat API v2 shape) under\n"+
		"/genesys/2/chat/, its Server-Sent Events push channel, and the Chat HA web sample at /.",
		args, errw, &file, func(fs *flag.FlagSet) {
			file.Config.RegisterFlags(fs)
			file.clientFile.registerFlags(fs)
		})
	if err != nil {
		return err
	}
	part, err := startClientPart(ctx, "webapi", file.Core, file.clientFile, errw)
	if err != nil {
		return err
	}
	defer part.close(ctx)
	srv, err := webapi.New(file.Config, part.core, part.tel)
	if err != nil {
		return err
	}
	ln, scheme, err := part.listen(ctx, file.HTTP)
	if err != nil {
		return err
	}
	leave, err := file.Register.register(ctx, "webapi", ln.Addr(), part.client.PathUp, func(up bool) {
		if up {
			srv.ReturnToRotation()
		} else {
			srv.LeaveRotation("no path to the chat cores (sidecar down)")
		}
	}, part.tel)
	if err != nil {
		ln.Close()
		return err
	}
	defer leave()
	fmt.Fprintf(out, "hachat webapi: %s://%s/ (core %s)\n", scheme, ln.Addr(), strings.Join(part.targets, ","))
	return srv.Serve(ctx, ln)
}
