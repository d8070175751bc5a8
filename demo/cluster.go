package demo

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"

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
	WitnessHTTP              string
	WitnessGossip            string
	SidecarWebAPIAdmin       string
	SidecarWebAPIListen      string
	SidecarInteractionAdmin  string
	SidecarInteractionListen string
	WebAPI                   string
	Interaction              string
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
		WitnessHTTP: h(7211), WitnessGossip: h(7213),
		SidecarWebAPIAdmin: h(7302), SidecarWebAPIListen: h(7301),
		SidecarInteractionAdmin: h(7312), SidecarInteractionListen: h(7311),
		WebAPI:      h(8080),
		Interaction: h(8081),
	}
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
		WitnessHTTP: next(false), WitnessGossip: next(true),
		SidecarWebAPIAdmin: next(false), SidecarWebAPIListen: next(false),
		SidecarInteractionAdmin: next(false), SidecarInteractionListen: next(false),
		WebAPI:      next(false),
		Interaction: next(false),
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
	// StageMesh replaces the witness by the xDS control plane and puts a
	// sidecar in front of webapi and of interaction.
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
//   - StageMesh: ucs, core-a, core-b, the xds control plane (a gossip member
//     and the cores' witness), a sidecar per client, and webapi and
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
	case l.Stage >= StageMesh:
		witnessHTTP = a.XDSHTTP
	}
	// The third gossip member: the witness, later the control plane.
	thirdGossip := a.WitnessGossip
	if l.Stage >= StageMesh {
		thirdGossip = a.XDSGossip
	}
	core := func(name, role, httpAddr, grpcAddr, gossip, peerGRPC, peerGossip string) Part {
		args := []string{logf, "--name=" + name, "--role=" + role, "--http=" + httpAddr, "--grpc=" + grpcAddr,
			"--ucs=" + ucsURL, "--ucs-token=" + l.WriterToken, "--service-token=" + l.ServiceToken, "--admin-token=" + l.AdminToken}
		if l.Stage >= StagePair {
			args = append(args, "--peer="+peerGRPC, "--witness="+witnessHTTP,
				"--gossip-bind="+gossip, "--gossip-join="+peerGossip+","+thirdGossip, "--gossip-key="+l.GossipKey)
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
	}
	webapiCore, interactionCore := coreTarget, coreTarget
	if l.Stage >= StageMesh {
		parts = append(parts, Part{Name: "xds", Kind: KindXDS, HTTP: a.XDSHTTP, GRPC: a.XDSGRPC, Args: []string{
			logf, "--name=xds", "--http=" + a.XDSHTTP, "--grpc=" + a.XDSGRPC, "--gossip-bind=" + a.XDSGossip,
			"--gossip-join=" + a.CoreAGossip + "," + a.CoreBGossip, "--gossip-key=" + l.GossipKey,
			"--admin-token=" + l.AdminToken,
		}})
		sidecar := func(name, admin, listen string) Part {
			return Part{Name: name, Kind: KindProxy, HTTP: admin, GRPC: listen, Args: []string{
				logf, "--node-id=" + name, "--admin=" + admin, "--listen=" + listen, "--xds=" + a.XDSGRPC,
			}}
		}
		parts = append(parts,
			sidecar("sidecar-webapi", a.SidecarWebAPIAdmin, a.SidecarWebAPIListen),
			sidecar("sidecar-interaction", a.SidecarInteractionAdmin, a.SidecarInteractionListen))
		webapiCore, interactionCore = a.SidecarWebAPIListen, a.SidecarInteractionListen
	}
	parts = append(parts,
		Part{Name: "webapi", Kind: KindWebAPI, HTTP: a.WebAPI, Args: []string{
			logf, "--http=" + a.WebAPI, "--core=" + webapiCore, "--service=" + l.Service,
		}},
		Part{Name: "interaction", Kind: KindInteraction, HTTP: a.Interaction, Args: []string{
			logf, "--http=" + a.Interaction, "--core=" + interactionCore, "--service-token=" + l.ServiceToken,
			"--accounts=" + l.Accounts,
		}},
	)
	if l.CertDir != "" {
		for i := range parts {
			p := &parts[i]
			p.Args = append(p.Args, TLSArgs(l.CertDir, p.Name)...)
			switch p.Kind {
			case KindUCS, KindWitness, KindXDS, KindProxy:
				p.TLS = true
			}
		}
	}
	return Plan{Parts: parts}
}

// TLSArgs returns the --tls-* flags of the part called name whose
// certificate is in certDir.
func TLSArgs(certDir, name string) []string {
	f := mtls.FilesIn(certDir, name)
	return []string{"--tls-ca=" + f.CA, "--tls-cert=" + f.Cert, "--tls-key=" + f.Key}
}
