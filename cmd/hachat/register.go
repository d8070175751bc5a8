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
	// WithdrawWithoutCore withdraws the instance from the gossip cluster
	// (so from the edge's rotation) while it has no path to the chat cores
	// (chatclient.Client.PathUp: its sidecar died), and registers it again
	// when the path is back (default true).
	WithdrawWithoutCore bool `yaml:"withdraw-without-core"`
}

func defaultRegisterFile() registerFile {
	g := membership.DefaultConfig()
	g.BindAddr = "127.0.0.1:0"
	return registerFile{Gossip: g, WithdrawWithoutCore: true}
}

func (f *registerFile) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.Name, "gossip-name", f.Name, "name of this instance in the gossip cluster, unique (default: the part's kind); used with --gossip-join")
	fs.BoolVar(&f.WithdrawWithoutCore, "withdraw-without-core", f.WithdrawWithoutCore, "with --gossip-join: leave the gossip cluster (the edge's rotation) while the chat cores cannot be reached (the sidecar is down), join again when they can")
	f.Gossip.RegisterFlags(fs)
}

// register joins the gossip cluster as a member of kind (webapi or
// interaction) advertising addr, when --gossip-join is set. With
// --withdraw-without-core it stays registered only while pathUp passes (the
// chat client's view of its connection to the sidecar or the cores,
// chatclient.Client.PathUp): an instance cut off from the cores withdraws,
// so that the control planes unpublish it and the edge sends its clients to
// the others (membership.Presence), and onChange, when not nil, is told of
// each withdrawal (false) and of the path's return (true, before the new
// registration). The returned stop
// leaves the cluster (the control plane then unpublishes the instance at
// once). Without --gossip-join it does nothing.
func (f registerFile) register(ctx context.Context, kind string, addr net.Addr, pathUp func() error, onChange func(up bool), tel *telemetry.Telemetry) (stop func(), err error) {
	if len(f.Gossip.Join) == 0 {
		return func() {}, nil
	}
	g := f.Gossip
	g.Name = f.Name
	if g.Name == "" {
		g.Name = kind
	}
	meta := membership.Meta{Kind: kind, HTTPAddr: addr.String()}
	if f.WithdrawWithoutCore {
		p, err := membership.StartPresence(ctx, g, meta, tel,
			membership.PresenceConfig{Interval: 100 * time.Millisecond, OnChange: onChange},
			func(context.Context) error { return pathUp() })
		if err != nil {
			return nil, fmt.Errorf("join the gossip cluster: %w", err)
		}
		tel.Logger.Info("registered in the gossip cluster, withdrawn while the chat cores cannot be reached", "name", g.Name, "kind", kind, "http", addr.String())
		return func() { p.Stop(ctx) }, nil
	}
	m, err := membership.New(ctx, g, meta, tel)
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
