package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hachat/hachat/coord"
	"github.com/hachat/hachat/interaction"
	"github.com/hachat/hachat/mtls"
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
	ln, scheme, err := part.listen(ctx, file.HTTP)
	if err != nil {
		return err
	}
	var opts []interaction.Option
	if file.Coordination != "" {
		var etcdTLS *tls.Config
		if part.tls != nil {
			etcdTLS = part.tls.ClientConfig(mtls.Allow(mtls.KindCoord))
		}
		cli, err := coord.Dial(file.Coordination, etcdTLS)
		if err != nil {
			ln.Close()
			return err
		}
		defer cli.Close()
		adv := file.Advertise
		if adv == "" {
			adv = scheme + "://" + ln.Addr().String()
		}
		var rt http.RoundTripper
		if part.https {
			// The leader serves the desktop's certificate; the instances
			// trust the cluster's CA for it.
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.TLSClientConfig = part.tls.ClientConfig(mtls.Allow(mtls.KindInteraction))
			t.ResponseHeaderTimeout = 20 * time.Second
			rt = t
		}
		opts = append(opts, interaction.WithStateStore(interaction.NewEtcdStore(cli, interaction.EtcdPrefix, file.LeaderLease), adv, rt))
		part.tel.Logger.Info("interaction instances coordinated through etcd", "endpoints", file.Coordination, "advertise", adv)
	}
	srv, err := interaction.New(file.Config, part.core, part.tel, opts...)
	if err != nil {
		ln.Close()
		return err
	}
	leave, err := file.Register.register(ctx, "interaction", ln.Addr(), part.client.PathUp, srv.SetEligible, part.tel)
	if err != nil {
		ln.Close()
		return err
	}
	defer leave()
	fmt.Fprintf(out, "hachat interaction: %s://%s/agent (core %s)\n", scheme, ln.Addr(), strings.Join(part.targets, ","))
	return srv.Serve(ctx, ln)
}
