package main

import (
	"context"
	"flag"
	"fmt"
	"net"

	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/telemetry"
)

// registerFile is how a webapi or interaction instance registers with the
// control plane: it joins the gossip cluster as a member of its kind whose
// HTTP address is its public listener, and the control plane publishes it
// to the edge. Without --gossip-join the instance does not gossip.
type registerFile struct {
	// Name is the instance's unique name in the gossip cluster (default:
	// the subcommand's name).
	Name   string            `yaml:"gossip-name"`
	Gossip membership.Config `yaml:",inline"`
}

func defaultRegisterFile() registerFile {
	g := membership.DefaultConfig()
	g.BindAddr = "127.0.0.1:0"
	return registerFile{Gossip: g}
}

func (f *registerFile) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.Name, "gossip-name", f.Name, "name of this instance in the gossip cluster, unique (default: the part's kind); used with --gossip-join")
	f.Gossip.RegisterFlags(fs)
}

// register joins the gossip cluster as a member of kind (webapi or
// interaction) advertising addr, when --gossip-join is set, and stays
// registered only while a TCP connection to one of core (the sidecar's
// listener, or the cores) succeeds: an instance cut off from the cores
// withdraws so that the edge moves its clients to the others
// (membership.Presence). The returned stop leaves the cluster (the control
// plane then unpublishes the instance at once). onChange, when not nil, is
// told of each withdrawal and new registration. Without --gossip-join it
// does nothing.
func (f registerFile) register(ctx context.Context, kind string, addr net.Addr, core []string, onChange func(registered bool), tel *telemetry.Telemetry) (stop func(), err error) {
	if len(f.Gossip.Join) == 0 {
		return func() {}, nil
	}
	g := f.Gossip
	g.Name = f.Name
	if g.Name == "" {
		g.Name = kind
	}
	p, err := membership.StartPresence(ctx, g, membership.Meta{Kind: kind, HTTPAddr: addr.String()}, tel,
		membership.PresenceConfig{OnChange: onChange}, membership.DialAny(core))
	if err != nil {
		return nil, fmt.Errorf("join the gossip cluster: %w", err)
	}
	tel.Logger.Info("registered in the gossip cluster", "name", g.Name, "kind", kind, "http", addr.String())
	return func() { p.Stop(ctx) }, nil
}
