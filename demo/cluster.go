package demo

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hachat/hachat/mtls"
)

// Addrs holds the loopback addresses (host:port) of every part of the
// standard cluster. DefaultAddrs gives the demo's fixed ports
// (docs/design.md), FreeAddrs free ones for tests.
type Addrs struct {
	UCS                      string
	UCS2                     string // the second ucs instance (Layout.UCSStore postgres)
	CoreAHTTP, CoreAGRPC     string
	CoreAGossip              string
	CoreBHTTP, CoreBGRPC     string
	CoreBGossip              string
	XDSHTTP, XDSGRPC         string
	XDSGossip                string
	XDSBHTTP, XDSBGRPC       string
	XDSBGossip               string
	WitnessHTTP              string
	WitnessGossip            string
	SidecarWebAPIAdmin       string
	SidecarWebAPIListen      string
	SidecarInteractionAdmin  string
	SidecarInteractionListen string
	// Each instance behind the edge has a sidecar of its own, so that one
	// sidecar's death cuts only its instance off the cores: webapi-2's and
	// interaction-2's (issue 8).
	SidecarWebAPI2Admin, SidecarWebAPI2Listen           string
	SidecarInteraction2Admin, SidecarInteraction2Listen string
	// WebAPI and Interaction are the customers' and the agents' address:
	// the edge's from StageMesh on, the one instance's before.
	WebAPI      string
	Interaction string
	// From StageMesh on the instances sit behind the edge: two webapi
	// instances and one interaction instance on their own addresses,
	// each a gossip member so that the control plane publishes it.
	WebAPI1, WebAPI2             string
	InteractionInstance          string
	WebAPI1Gossip, WebAPI2Gossip string
	InteractionGossip            string
	// With the coordination members a second interaction instance
	// (interaction-2) runs beside the first; they elect the one that
	// routes and keep the routing state in etcd.
	InteractionInstance2 string
	InteractionGossip2   string
	EdgeAdmin            string
	// The coordination members (etcd-1..3): client, peer (raft) and HTTP.
	Coord1Client, Coord1Peer, Coord1HTTP string
	Coord2Client, Coord2Peer, Coord2HTTP string
	Coord3Client, Coord3Peer, Coord3HTTP string
	// Pairs are the cores of pairs 2, 3, ... (Layout.Pairs; Pairs[0] is
	// pair 2), MaxPairs-1 of them; pair 1 is core-a and core-b.
	Pairs []PairAddrs
}

// CoreAddrs are one core's addresses.
type CoreAddrs struct{ HTTP, GRPC, Gossip string }

// PairAddrs are the addresses of the two cores of one pair and of the
// sidecars that serve the pair's listener to each instance.
type PairAddrs struct {
	A, B CoreAddrs
	// Sidecars are the sidecars of the pair's listener (chatcore-sidecar-P)
	// beside webapi, webapi-2, interaction and interaction-2, in that
	// order (a hachat sidecar serves one listener: docs/design.md).
	Sidecars [4]SidecarAddrs
}

// SidecarAddrs are one sidecar's admin and data listener addresses.
type SidecarAddrs struct{ Admin, Listen string }

// MaxPairs is the most pairs a standard plan runs (Layout.Pairs).
const MaxPairs = 9

// PairCoreNames returns the part names of pair p's cores (p from 1):
// core-a and core-b for pair 1, core-<p>a and core-<p>b for the others.
func PairCoreNames(p int) (a, b string) {
	if p <= 1 {
		return "core-a", "core-b"
	}
	return fmt.Sprintf("core-%da", p), fmt.Sprintf("core-%db", p)
}

// coord returns the client, peer and HTTP addresses of member i (1..3).
func (a Addrs) coord(i int) (client, peer, http string) {
	switch i {
	case 1:
		return a.Coord1Client, a.Coord1Peer, a.Coord1HTTP
	case 2:
		return a.Coord2Client, a.Coord2Peer, a.Coord2HTTP
	}
	return a.Coord3Client, a.Coord3Peer, a.Coord3HTTP
}

// DefaultAddrs returns the demo addresses of docs/design.md, all on 127.0.0.1.
func DefaultAddrs() Addrs {
	h := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	return Addrs{
		UCS:       h(7080),
		UCS2:      h(7081),
		CoreAHTTP: h(7102), CoreAGRPC: h(7101), CoreAGossip: h(7103),
		CoreBHTTP: h(7112), CoreBGRPC: h(7111), CoreBGossip: h(7113),
		XDSHTTP: h(7201), XDSGRPC: h(7200), XDSGossip: h(7203),
		XDSBHTTP: h(7221), XDSBGRPC: h(7220), XDSBGossip: h(7223),
		WitnessHTTP: h(7211), WitnessGossip: h(7213),
		SidecarWebAPIAdmin: h(7302), SidecarWebAPIListen: h(7301),
		SidecarInteractionAdmin: h(7312), SidecarInteractionListen: h(7311),
		SidecarWebAPI2Admin: h(7322), SidecarWebAPI2Listen: h(7321),
		SidecarInteraction2Admin: h(7332), SidecarInteraction2Listen: h(7331),
		WebAPI:      h(8080),
		Interaction: h(8081),
		WebAPI1:     h(8082), WebAPI2: h(8083), InteractionInstance: h(8084),
		WebAPI1Gossip: h(7503), WebAPI2Gossip: h(7513), InteractionGossip: h(7523),
		EdgeAdmin:            h(7502),
		InteractionInstance2: h(8085), InteractionGossip2: h(7533),
		Coord1Client: h(7401), Coord1Peer: h(7402), Coord1HTTP: h(7403),
		Coord2Client: h(7411), Coord2Peer: h(7412), Coord2HTTP: h(7413),
		Coord3Client: h(7421), Coord3Peer: h(7422), Coord3HTTP: h(7423),
		Pairs: defaultPairAddrs(h),
	}
}

// defaultPairAddrs gives pair p (2..MaxPairs) the ports 76PQ: core-<p>a
// 7600+20(p-2)+1..3 (gRPC, HTTP, gossip), core-<p>b ten above; the pair's
// sidecars listen on +4, +6, +14, +16 with their admin one above.
func defaultPairAddrs(h func(int) string) []PairAddrs {
	var out []PairAddrs
	for p := 2; p <= MaxPairs; p++ {
		base := 7600 + 20*(p-2)
		pa := PairAddrs{
			A: CoreAddrs{GRPC: h(base + 1), HTTP: h(base + 2), Gossip: h(base + 3)},
			B: CoreAddrs{GRPC: h(base + 11), HTTP: h(base + 12), Gossip: h(base + 13)},
		}
		for i, off := range []int{4, 6, 14, 16} {
			pa.Sidecars[i] = SidecarAddrs{Listen: h(base + off), Admin: h(base + off + 1)}
		}
		out = append(out, pa)
	}
	return out
}

// FreeAddrs returns addresses on 127.0.0.1 whose ports were free (TCP and,
// for gossip, UDP too) a moment ago, all distinct.
func FreeAddrs() (Addrs, error) {
	seen := map[string]bool{}
	var err error
	next := func(udp bool) string {
		if err != nil {
			return ""
		}
		for range 50 {
			var a string
			a, err = FreePort(udp)
			if err != nil {
				return ""
			}
			if !seen[a] {
				seen[a] = true
				return a
			}
		}
		err = fmt.Errorf("free port: no distinct port found")
		return ""
	}
	a := Addrs{
		UCS:       next(false),
		UCS2:      next(false),
		CoreAHTTP: next(false), CoreAGRPC: next(false), CoreAGossip: next(true),
		CoreBHTTP: next(false), CoreBGRPC: next(false), CoreBGossip: next(true),
		XDSHTTP: next(false), XDSGRPC: next(false), XDSGossip: next(true),
		XDSBHTTP: next(false), XDSBGRPC: next(false), XDSBGossip: next(true),
		WitnessHTTP: next(false), WitnessGossip: next(true),
		SidecarWebAPIAdmin: next(false), SidecarWebAPIListen: next(false),
		SidecarInteractionAdmin: next(false), SidecarInteractionListen: next(false),
		SidecarWebAPI2Admin: next(false), SidecarWebAPI2Listen: next(false),
		SidecarInteraction2Admin: next(false), SidecarInteraction2Listen: next(false),
		WebAPI:      next(false),
		Interaction: next(false),
		WebAPI1:     next(false), WebAPI2: next(false), InteractionInstance: next(false),
		WebAPI1Gossip: next(true), WebAPI2Gossip: next(true), InteractionGossip: next(true),
		EdgeAdmin:            next(false),
		InteractionInstance2: next(false), InteractionGossip2: next(true),
		Coord1Client: next(false), Coord1Peer: next(false), Coord1HTTP: next(false),
		Coord2Client: next(false), Coord2Peer: next(false), Coord2HTTP: next(false),
		Coord3Client: next(false), Coord3Peer: next(false), Coord3HTTP: next(false),
	}
	for range MaxPairs - 1 {
		core := func() CoreAddrs { return CoreAddrs{GRPC: next(false), HTTP: next(false), Gossip: next(true)} }
		pa := PairAddrs{A: core(), B: core()}
		for i := range pa.Sidecars {
			pa.Sidecars[i] = SidecarAddrs{Listen: next(false), Admin: next(false)}
		}
		a.Pairs = append(a.Pairs, pa)
	}
	return a, err
}

// FreePort returns 127.0.0.1:port for a TCP port the kernel just handed out
// and released; with udp, the same UDP port was free as well (memberlist
// gossips on both).
func FreePort(udp bool) (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("free port: %w", err)
		}
		addr := l.Addr().String()
		if udp {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				l.Close()
				continue
			}
			pc.Close()
		}
		l.Close()
		return addr, nil
	}
	return "", fmt.Errorf("free port: no port free for both TCP and UDP")
}

// Stage selects how much of the cluster the standard plan holds, by the
// issue that added it.
type Stage int

// The stages of the standard plan.
const (
	// StageSingle: ucs, core-a (primary), webapi and interaction wired to core-a.
	StageSingle Stage = 2
	// StagePair adds core-b (backup) and the witness; webapi and interaction
	// are given both cores.
	StagePair Stage = 3
	// StageMesh replaces the witness by two xDS control planes (xds and
	// xds-b) and puts a sidecar in front of webapi and of interaction.
	StageMesh Stage = 4
)

// Layout describes a standard cluster: where it listens and how its cores
// are configured.
type Layout struct {
	// Addrs are the parts' addresses.
	Addrs Addrs
	// Stage selects the parts (default StageSingle).
	Stage Stage
	// DataDir holds ucsmock's database (DataDir/ucs.db) and any other
	// on-disk state (default ".hachat").
	DataDir string
	// UCSStore is the store of ucs: "" or "bbolt" (one instance, its
	// database in DataDir/ucs.db) or "postgres": two instances, ucs and
	// ucs-2, sharing the PostgreSQL database UCSPostgres; the cores are
	// given both and fail over between them.
	UCSStore string
	// UCSPostgres is the connection string of the postgres store.
	UCSPostgres string
	// LogFormat is passed to every part as --log-format (default "text").
	LogFormat string
	// Service is the chat service name the web sample starts chats on
	// (default "customer-support").
	Service string
	// ServiceToken lets interaction join agents to sessions (default "demo-service-token").
	ServiceToken string
	// AdminToken protects ucsmock's fault injection, the control plane's
	// admin API, the cores' switchover and their replication stream
	// (default "demo-admin-token").
	AdminToken string
	// WriterToken is what the cores show ucsmock to save transcripts and
	// claim epochs (ucs --writer-token, core --ucs-token; default
	// "demo-writer-token").
	WriterToken string
	// UCSReaderToken is what a client that only reads transcripts shows
	// ucsmock (ucs --reader-token; default "demo-ucs-reader-token"). The
	// cores read with the writer token, which ucsmock accepts for reads too.
	UCSReaderToken string
	// GossipKey encrypts the memberlist gossip of the cores, the witness
	// and the control plane (base64 of 32 bytes; default DemoGossipKey).
	GossipKey string
	// CoreArgs are extra flags for every core (after the demo's defaults).
	CoreArgs []string
	// CertDir, when set, turns mTLS on everywhere: it holds the cluster CA
	// and one certificate per part (EnsureCerts makes them). ucs, the
	// witness, the control plane and the sidecars then serve their HTTP
	// with mTLS too (Part.TLS); the cores' HTTP (/metrics, /healthz,
	// /status: read-only) stays plain, and webapi and interaction serve
	// browsers plain HTTP on loopback.
	CertDir string
	// CoordMembers is how many coordination members (hachat coord: embedded
	// etcd, named etcd-1, etcd-2, ...) the plan runs to hold the cores'
	// epochs and the primary's lease: 0 (the default) keeps the epochs at
	// UCS; the demo runs 3 (at most 3). Paired stages only.
	CoordMembers int
	// CoordDataDir, when set, holds the coordination members' data
	// (CoordDataDir/etcd-N.etcd: write-ahead log and database) instead of
	// DataDir, e.g. on another filesystem than ucs's database: etcd fsyncs
	// its write-ahead log on every write, so what else writes to its disk
	// shows in the latency of an epoch claim.
	CoordDataDir string
	// Coordination, when set, points the cores at an etcd the deployment
	// already runs (endpoints host:port,...) instead of members of the plan.
	Coordination string
	// Pairs is how many primary/backup pairs of cores the plan runs
	// (paired stages; 0 or 1: core-a and core-b only, as before; at most
	// MaxPairs). Pair p > 1 is core-<p>a (primary) and core-<p>b (backup)
	// with --pair=<p>: its own epoch, gossiping in the same cluster.
	Pairs int
	// Accounts is interaction's accounts file (default DataDir/accounts.json);
	// whoever starts the plan writes it first (WriteAccounts).
	Accounts string
}

// Filled returns l with every default filled in (the tokens the plan uses).
func (l Layout) Filled() Layout {
	l.fill()
	return l
}

func (l *Layout) fill() {
	if l.Stage == 0 {
		l.Stage = StageSingle
	}
	if l.DataDir == "" {
		l.DataDir = ".hachat"
	}
	if l.LogFormat == "" {
		l.LogFormat = "text"
	}
	if l.Service == "" {
		l.Service = "customer-support"
	}
	if l.ServiceToken == "" {
		l.ServiceToken = "demo-service-token"
	}
	if l.AdminToken == "" {
		l.AdminToken = "demo-admin-token"
	}
	if l.WriterToken == "" {
		l.WriterToken = "demo-writer-token"
	}
	if l.UCSReaderToken == "" {
		l.UCSReaderToken = "demo-ucs-reader-token"
	}
	if l.GossipKey == "" {
		l.GossipKey = DemoGossipKey
	}
	if l.Accounts == "" {
		l.Accounts = filepath.Join(l.DataDir, "accounts.json")
	}
}

// AccountsFile returns the accounts file the standard plan gives interaction.
func (l Layout) AccountsFile() string {
	l.fill()
	return l.Accounts
}

// DemoGossipKey is the demo's gossip encryption key (the same as
// deploy/compose.yaml's default). It is public: a deployment sets its own.
const DemoGossipKey = "aGFjaGF0LWRlbW8tZ29zc2lwLWtleS0zMmJ5dGVzISE="

// HARecommended returns the chat core options the seed recommends for high
// availability; the demo and the tests set them on every core.
func HARecommended() []string {
	return []string{
		"--session-restoration-mode=simple",
		"--transcript-auto-save=1",
		"--transcript-save-on-error=close",
	}
}

// StandardPlan returns the plan of the standard cluster for l: the parts of
// `hachat demo`, in start order (each part's dependencies come first).
// With l.UCSStore "postgres", ucs is two instances (ucs, ucs-2) on one
// PostgreSQL database, which whoever runs the plan starts first.
//
//   - StageSingle: ucs, core-a (primary), webapi and interaction on core-a.
//   - StagePair: ucs, witness, core-a (primary), core-b (backup), each core
//     naming the other as --peer and asking the witness before a promotion;
//     the cores and the witness gossip (memberlist); webapi and interaction
//     are given both cores.
//   - With CoordMembers, the paired stages start etcd-1.. (hachat coord)
//     before the cores, which take their epochs from them (--coordination).
//   - StageMesh: ucs, core-a, core-b, two xds control planes (xds and
//     xds-b: gossip members serving the same snapshots; the cores ask a live
//     one as their witness), a sidecar per client that knows both control
//     planes and keeps its last configuration in DataDir, and webapi and
//     interaction that reach the cores only through their own sidecar.
func StandardPlan(l Layout) Plan {
	l.fill()
	a := l.Addrs
	logf := "--log-format=" + l.LogFormat
	scheme := "http://"
	if l.CertDir != "" {
		scheme = "https://"
	}
	ucsURL := scheme + a.UCS
	var parts []Part
	ucs := func(name, addr string, store ...string) Part {
		return Part{Name: name, Kind: KindUCS, HTTP: addr, Args: append([]string{
			logf, "--http=" + addr, "--admin-token=" + l.AdminToken,
			"--writer-token=" + l.WriterToken, "--reader-token=" + l.UCSReaderToken,
		}, store...)}
	}
	if l.UCSStore == "postgres" {
		pg := []string{"--store=postgres", "--postgres=" + l.UCSPostgres}
		parts = append(parts, ucs("ucs", a.UCS, pg...), ucs("ucs-2", a.UCS2, pg...))
		ucsURL += "," + scheme + a.UCS2
	} else {
		parts = append(parts, ucs("ucs", a.UCS, "--db="+filepath.Join(l.DataDir, "ucs.db")))
	}
	witnessHTTP := ""
	switch {
	case l.Stage == StagePair:
		witnessHTTP = a.WitnessHTTP
		parts = append(parts, Part{Name: "witness", Kind: KindWitness, HTTP: a.WitnessHTTP, Args: []string{
			logf, "--name=witness", "--http=" + a.WitnessHTTP, "--gossip-bind=" + a.WitnessGossip,
			"--gossip-join=" + a.CoreAGossip + "," + a.CoreBGossip, "--gossip-key=" + l.GossipKey,
		}})
	}
	// The third gossip member: the witness, later the control planes. With
	// two control planes no --witness is given: a core asks whichever
	// control plane membership shows alive (chatcore's witnessAddr), so
	// losing one of them does not silence the witness.
	thirdGossip := a.WitnessGossip
	if l.Stage >= StageMesh {
		thirdGossip = a.XDSGossip + "," + a.XDSBGossip
	}
	coordination := l.Coordination
	if l.Stage >= StagePair && coordination == "" && l.CoordMembers > 0 {
		n := min(l.CoordMembers, 3)
		coordDir := l.DataDir
		if l.CoordDataDir != "" {
			coordDir = l.CoordDataDir
		}
		var cluster, clients []string
		for i := 1; i <= n; i++ {
			cl, peer, _ := a.coord(i)
			cluster = append(cluster, fmt.Sprintf("etcd-%d=%s", i, peer))
			clients = append(clients, cl)
		}
		for i := 1; i <= n; i++ {
			cl, peer, httpAddr := a.coord(i)
			name := fmt.Sprintf("etcd-%d", i)
			parts = append(parts, Part{Name: name, Kind: KindCoord, HTTP: httpAddr, GRPC: cl, Args: []string{
				logf, "--name=" + name, "--client=" + cl, "--peer=" + peer, "--http=" + httpAddr,
				"--data-dir=" + filepath.Join(coordDir, name+".etcd"), "--initial-cluster=" + strings.Join(cluster, ","),
			}})
		}
		coordination = strings.Join(clients, ",")
	}
	core := func(name, role, httpAddr, grpcAddr, gossip, peerGRPC, peerGossip string) Part {
		args := []string{logf, "--name=" + name, "--role=" + role, "--http=" + httpAddr, "--grpc=" + grpcAddr,
			"--ucs=" + ucsURL, "--ucs-token=" + l.WriterToken, "--service-token=" + l.ServiceToken, "--admin-token=" + l.AdminToken}
		if l.Stage >= StagePair {
			args = append(args, "--peer="+peerGRPC)
			if witnessHTTP != "" {
				args = append(args, "--witness="+witnessHTTP)
			}
			args = append(args, "--gossip-bind="+gossip, "--gossip-join="+peerGossip+","+thirdGossip, "--gossip-key="+l.GossipKey)
		}
		if l.Stage >= StagePair && coordination != "" {
			args = append(args, "--coordination="+coordination)
		}
		args = append(args, HARecommended()...)
		args = append(args, l.CoreArgs...)
		return Part{Name: name, Kind: KindCore, Role: role, HTTP: httpAddr, GRPC: grpcAddr, Args: args}
	}
	parts = append(parts, core("core-a", "primary", a.CoreAHTTP, a.CoreAGRPC, a.CoreAGossip, a.CoreBGRPC, a.CoreBGossip))
	coreTarget := a.CoreAGRPC
	if l.Stage >= StagePair {
		parts = append(parts, core("core-b", "backup", a.CoreBHTTP, a.CoreBGRPC, a.CoreBGossip, a.CoreAGRPC, a.CoreAGossip))
		coreTarget = a.CoreAGRPC + "," + a.CoreBGRPC
		parts[len(parts)-2].Pair, parts[len(parts)-1].Pair = "1", "1"
		if l.Pairs > 1 {
			parts = append(parts, PairParts(l, 2, l.Pairs)...)
		}
	} else {
		parts[len(parts)-1].Pair = "1"
	}
	webapiCore, interactionCore := coreTarget, coreTarget
	webapi2Core, interaction2Core := coreTarget, coreTarget
	// corePairs is, with several pairs behind sidecars, each instance's
	// --core-pairs: its sidecars of the pairs other than pair 1.
	corePairs := map[string]string{}
	withPairs := func(name string, args []string) []string {
		if cp := corePairs[name]; cp != "" {
			args = append(args, "--core-pairs="+cp, "--pairs-from="+scheme+a.XDSHTTP+","+scheme+a.XDSBHTTP)
		}
		return args
	}
	if l.Stage >= StageMesh {
		// Two control planes, built from the same gossip membership:
		// they publish the same content under the same versions.
		controlPlane := func(name, httpAddr, grpcAddr, gossip string) Part {
			p := Part{Name: name, Kind: KindXDS, HTTP: httpAddr, GRPC: grpcAddr, Args: []string{
				logf, "--name=" + name, "--http=" + httpAddr, "--grpc=" + grpcAddr, "--gossip-bind=" + gossip,
				"--gossip-join=" + a.CoreAGossip + "," + a.CoreBGossip, "--gossip-key=" + l.GossipKey,
				"--admin-token=" + l.AdminToken,
			}}
			if l.Pairs > 1 && coordination != "" {
				// The drained pairs, alike at both control planes and
				// kept across their restarts.
				p.Args = append(p.Args, "--coordination="+coordination)
			}
			return p
		}
		parts = append(parts,
			controlPlane("xds", a.XDSHTTP, a.XDSGRPC, a.XDSGossip),
			controlPlane("xds-b", a.XDSBHTTP, a.XDSBGRPC, a.XDSBGossip))
		sidecar := func(name, admin, listen string) Part {
			return Part{Name: name, Kind: KindProxy, HTTP: admin, GRPC: listen, Args: []string{
				logf, "--node-id=" + name, "--admin=" + admin, "--listen=" + listen,
				"--xds=" + a.XDSGRPC + "," + a.XDSBGRPC, "--xds-cache=" + XDSCacheFile(l.DataDir, name),
			}}
		}
		// With several pairs each instance has, beside its sidecar of
		// pair 1, one sidecar per other pair serving that pair's listener
		// (chatcore-sidecar-P): a hachat sidecar serves one listener.
		// pairSidecars adds those of instance i (the index in
		// PairAddrs.Sidecars) and returns the --core-pairs value.
		pairSidecars := func(instance string, i int) string {
			var items []string
			for p := 2; p <= min(l.Pairs, MaxPairs) && p-2 < len(a.Pairs); p++ {
				sa := a.Pairs[p-2].Sidecars[i]
				sc := sidecar(fmt.Sprintf("sidecar-%s-pair%d", instance, p), sa.Admin, sa.Listen)
				sc.Args = append(sc.Args, "--listener=chatcore-sidecar-"+strconv.Itoa(p))
				parts = append(parts, sc)
				items = append(items, strconv.Itoa(p)+"="+sa.Listen)
			}
			return strings.Join(items, ",")
		}
		// One sidecar per instance (webapi, webapi-2, interaction and,
		// with the coordination members, interaction-2): a sidecar's
		// death cuts only its own instance off the cores, and the edge
		// moves that instance's clients to the others (its health check
		// asks the instance's /readyz, which follows the core path).
		parts = append(parts,
			sidecar("sidecar-webapi", a.SidecarWebAPIAdmin, a.SidecarWebAPIListen),
			sidecar("sidecar-webapi-2", a.SidecarWebAPI2Admin, a.SidecarWebAPI2Listen),
			sidecar("sidecar-interaction", a.SidecarInteractionAdmin, a.SidecarInteractionListen))
		if l.Stage >= StagePair && coordination != "" {
			parts = append(parts, sidecar("sidecar-interaction-2", a.SidecarInteraction2Admin, a.SidecarInteraction2Listen))
		}
		if l.Stage >= StagePair && l.Pairs > 1 {
			corePairs["webapi"] = pairSidecars("webapi", 0)
			corePairs["webapi-2"] = pairSidecars("webapi-2", 1)
			corePairs["interaction"] = pairSidecars("interaction", 2)
			if coordination != "" {
				corePairs["interaction-2"] = pairSidecars("interaction-2", 3)
			}
		}
		webapiCore, interactionCore = a.SidecarWebAPIListen, a.SidecarInteractionListen
		webapi2Core, interaction2Core = a.SidecarWebAPI2Listen, a.SidecarInteraction2Listen
	}
	coreOf := func(name, first, second string) string {
		if strings.HasSuffix(name, "-2") {
			return second
		}
		return first
	}
	webapiPart := func(name, httpAddr string) Part {
		return Part{Name: name, Kind: KindWebAPI, HTTP: httpAddr, Args: withPairs(name, []string{
			logf, "--http=" + httpAddr, "--core=" + coreOf(name, webapiCore, webapi2Core), "--service=" + l.Service,
		})}
	}
	// With the coordination members, two interaction instances elect the
	// one that routes and keep the routing state (logins, offers, the
	// queue, participations) there: either can die.
	twoInteractions := l.Stage >= StagePair && coordination != ""
	interactionPart := func(name, httpAddr string) Part {
		args := []string{logf, "--http=" + httpAddr, "--core=" + coreOf(name, interactionCore, interaction2Core),
			"--service-token=" + l.ServiceToken, "--accounts=" + l.Accounts}
		if twoInteractions {
			args = append(args, "--coordination="+coordination)
		}
		return Part{Name: name, Kind: KindInteraction, HTTP: httpAddr, Args: withPairs(name, args)}
	}
	entry := Entrypoints{Customer: "http://" + a.WebAPI, Agent: "http://" + a.Interaction}
	if l.Stage < StageMesh {
		parts = append(parts, webapiPart("webapi", a.WebAPI), interactionPart("interaction", a.Interaction))
		if twoInteractions {
			parts = append(parts, interactionPart("interaction-2", a.InteractionInstance2))
		}
	} else {
		// Behind the edge: webapi twice (stateless: every chat's state is
		// in the cores), interaction twice with the coordination members
		// (one leads, its state in etcd), else once (it keeps agent
		// logins, offers and the queue in memory: a second instance would
		// split them).
		// Each registers in the gossip cluster; the control plane
		// publishes them to the edge, which listens on the customers'
		// and the agents' addresses.
		// The edge dials the instances from EdgeSource, a loopback
		// address nothing else uses, and tells them each client's address
		// in a PROXY protocol header; they trust that address only, so the
		// demo's own direct calls (from 127.0.0.1) stay plain.
		gossip := func(p Part, name, bind string) Part {
			p.Args = append(p.Args, "--gossip-name="+name, "--gossip-bind="+bind,
				"--gossip-join="+a.XDSGossip+","+a.XDSBGossip, "--gossip-key="+l.GossipKey,
				"--proxy-protocol-from="+EdgeSource)
			return p
		}
		parts = append(parts,
			gossip(webapiPart("webapi", a.WebAPI1), "webapi", a.WebAPI1Gossip),
			gossip(webapiPart("webapi-2", a.WebAPI2), "webapi-2", a.WebAPI2Gossip),
			gossip(interactionPart("interaction", a.InteractionInstance), "interaction", a.InteractionGossip),
		)
		if twoInteractions {
			parts = append(parts, gossip(interactionPart("interaction-2", a.InteractionInstance2), "interaction-2", a.InteractionGossip2))
		}
		parts = append(parts,
			Part{Name: "edge", Kind: KindProxy, HTTP: a.EdgeAdmin, GRPC: a.WebAPI, Args: []string{
				logf, "--ingress", "--node-id=edge", "--admin=" + a.EdgeAdmin, "--listen=" + a.WebAPI,
				"--agent-listen=" + a.Interaction, "--xds=" + a.XDSGRPC + "," + a.XDSBGRPC,
				"--xds-cache=" + XDSCacheFile(l.DataDir, "edge"), "--upstream-source=" + EdgeSource,
			}},
		)
		for i := range parts {
			if parts[i].Kind == KindXDS {
				parts[i].Args = append(parts[i].Args, "--ingress-customer="+a.WebAPI, "--ingress-agent="+a.Interaction)
			}
		}
	}
	if l.CertDir != "" {
		for i := range parts {
			p := &parts[i]
			if p.Pair == "" || p.Pair == "1" { // PairParts gave the other pairs' cores theirs
				p.Args = append(p.Args, TLSArgs(l.CertDir, p.Name)...)
			}
			switch p.Kind {
			case KindUCS, KindWitness, KindXDS, KindProxy:
				p.TLS = true
			}
		}
	}
	return Plan{Parts: parts, Entrypoints: entry}
}

// EdgeSource is the loopback address the demo's edge dials the instances
// from (--upstream-source), and the one they accept a PROXY protocol
// header from (--proxy-protocol-from).
const EdgeSource = "127.0.0.254"

// XDSCacheFile is where the sidecar called name keeps its last accepted xDS
// configuration in a cluster whose on-disk state is under dataDir.
func XDSCacheFile(dataDir, name string) string {
	return filepath.Join(dataDir, name+".xds-cache.json")
}

// TLSArgs returns the --tls-* flags of the part called name whose
// certificate is in certDir.
func TLSArgs(certDir, name string) []string {
	f := mtls.FilesIn(certDir, name)
	return []string{"--tls-ca=" + f.CA, "--tls-cert=" + f.Cert, "--tls-key=" + f.Key}
}

// PairParts returns the core parts of pairs from..to (2 <= from, to <=
// MaxPairs) of the standard plan for l: core-<p>a (primary) and core-<p>b
// (backup), --pair=<p>, each the other's peer, gossiping with core-a and
// the third gossip members like pair 1. A pair added to a running cluster
// (Supervisor.AddParts) is one of these: nothing else restarts.
func PairParts(l Layout, from, to int) []Part {
	if from > to {
		return nil
	}
	l.fill()
	one := l
	one.Pairs = 0
	pl := StandardPlan(one)
	ca, _ := pl.Part("core-a")
	var out []Part
	for p := max(from, 2); p <= min(to, MaxPairs) && p-2 < len(l.Addrs.Pairs); p++ {
		pa := l.Addrs.Pairs[p-2]
		an, bn := PairCoreNames(p)
		mk := func(name, role string, me, peer CoreAddrs) Part {
			args := pairCoreArgs(ca.Args, name, role, me, peer, l.Addrs.CoreAGossip)
			args = append(args, "--pair="+strconv.Itoa(p))
			if l.CertDir != "" {
				args = append(args, TLSArgs(l.CertDir, name)...)
			}
			return Part{Name: name, Kind: KindCore, Role: role, HTTP: me.HTTP, GRPC: me.GRPC, Pair: strconv.Itoa(p), Args: args}
		}
		out = append(out, mk(an, "primary", pa.A, pa.B), mk(bn, "backup", pa.B, pa.A))
	}
	return out
}

// pairCoreArgs turns core-a's flags into those of another core: its name,
// role and addresses, its peer, and a gossip join of its peer, core-a and
// the rest of core-a's join list. core-a's TLS flags are dropped (the
// caller adds the core's own).
func pairCoreArgs(coreA []string, name, role string, me, peer CoreAddrs, coreAGossip string) []string {
	var out []string
	for _, a := range coreA {
		k, v, _ := strings.Cut(a, "=")
		switch k {
		case "--name":
			a = k + "=" + name
		case "--role":
			a = k + "=" + role
		case "--http":
			a = k + "=" + me.HTTP
		case "--grpc":
			a = k + "=" + me.GRPC
		case "--peer":
			a = k + "=" + peer.GRPC
		case "--gossip-bind":
			a = k + "=" + me.Gossip
		case "--gossip-join":
			rest := strings.SplitN(v, ",", 2) // core-b's gossip, then the third members
			a = k + "=" + peer.Gossip + "," + coreAGossip
			if len(rest) == 2 {
				a += "," + rest[1]
			}
		case "--tls-ca", "--tls-cert", "--tls-key":
			continue
		}
		out = append(out, a)
	}
	return out
}
