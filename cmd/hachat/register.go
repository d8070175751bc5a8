package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"time"

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
// interaction) advertising addr, when --gossip-join is set. The returned
// stop leaves the cluster (the control plane then unpublishes the instance
// at once). Without --gossip-join it does nothing.
func (f registerFile) register(ctx context.Context, kind string, addr net.Addr, tel *telemetry.Telemetry) (stop func(), err error) {
	if len(f.Gossip.Join) == 0 {
		return func() {}, nil
	}
	g := f.Gossip
	g.Name = f.Name
	if g.Name == "" {
		g.Name = kind
	}
	m, err := membership.New(ctx, g, membership.Meta{Kind: kind, HTTPAddr: addr.String()}, tel)
	if err != nil {
		return nil, fmt.Errorf("join the gossip cluster: %w", err)
	}
	tel.Logger.Info("registered in the gossip cluster", "name", g.Name, "kind", kind, "http", addr.String())
	return func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := m.Leave(lctx); err != nil && !errors.Is(err, membership.ErrClosed) {
			tel.Logger.Warn("leave the gossip cluster", "err", err)
		}
		m.Shutdown()
	}, nil
}
