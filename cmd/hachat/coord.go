package main

import (
	"context"
	"flag"
	"io"

	"github.com/hachat/hachat/coord"
	"github.com/hachat/hachat/telemetry"
)

// coordFile is the configuration of `hachat coord`: flags and YAML keys alike.
type coordFile struct {
	coord.Config `yaml:",inline"`
	Telemetry    telemetry.Config `yaml:"telemetry"`
}

// runCoord runs one member of the coordination cluster (embedded etcd).
func runCoord(ctx context.Context, args []string, out, errw io.Writer) error {
	f := coordFile{Config: coord.DefaultConfig(), Telemetry: telemetry.DefaultConfig()}
	err := parseFlags("coord", "Run a member of the coordination cluster: an embedded etcd server. Three members\n"+
		"hold the chat cores' epochs (fencing tokens) and the primary's lease; losing one changes nothing.",
		args, errw, &f, func(fs *flag.FlagSet) {
			fs.StringVar(&f.Name, "name", f.Name, "member name, unique in the cluster")
			fs.StringVar(&f.DataDir, "data-dir", f.DataDir, "write-ahead log and database (default .hachat/NAME.etcd)")
			fs.StringVar(&f.Client, "client", f.Client, "host:port serving etcd clients (the cores' --coordination)")
			fs.StringVar(&f.Peer, "peer", f.Peer, "host:port of raft traffic between members")
			fs.StringVar(&f.ClientAdvertise, "client-advertise", f.ClientAdvertise, "host:port announced to clients when --client is not dialable (0.0.0.0 in a pod; default --client)")
			fs.StringVar(&f.PeerAdvertise, "peer-advertise", f.PeerAdvertise, "host:port announced to the other members, as in their --initial-cluster, when --peer is not dialable (default --peer)")
			fs.StringVar(&f.HTTP, "http", f.HTTP, "HTTP address: /healthz, /metrics")
			fs.StringVar(&f.InitialCluster, "initial-cluster", f.InitialCluster, "every member as name=peer-host:port,... (empty: this member alone)")
			fs.StringVar(&f.ClusterToken, "cluster-token", f.ClusterToken, "initial cluster token (keeps clusters apart)")
			fs.UintVar(&f.HeartbeatMs, "heartbeat-ms", f.HeartbeatMs, "raft heartbeat interval in ms")
			fs.UintVar(&f.ElectionMs, "election-ms", f.ElectionMs, "raft election timeout in ms (a lease lasts at least 1.5 of them)")
			registerTLSFlags(fs, &f.TLS)
			f.Telemetry.RegisterFlags(fs)
		})
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, f.Telemetry, "coord", errw)
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.WithoutCancel(ctx))
	return coord.Run(ctx, f.Config, tel.Logger)
}
