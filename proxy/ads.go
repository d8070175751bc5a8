package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// ADS reconnect backoff: the first retry after about adsBackoffBase, doubling
// up to Config.ADSBackoffMax, each wait jittered to 50-100% of its value.
const adsBackoffBase = 50 * time.Millisecond

// nackPaceBase is the delay before re-NACKing a version already NACKed. A
// snapshot cache answers a NACK (which carries the previous good version)
// with the same bad snapshot at once; pacing keeps that from spinning.
const nackPaceBase = 100 * time.Millisecond

// adsClient holds one sidecar's ADS state. The last good resources live here
// and survive reconnects; the run goroutine owns every field.
type adsClient struct {
	p        *Proxy
	versions map[string]string // last accepted version per type
	lds      map[string]listenerInfo
	cds      map[string]clusterInfo
	eds      map[string]assignment
	edsNames []string                // EDS resources subscribed to
	raw      map[string][]*anypb.Any // last accepted resources per type, as sent
	saved    map[string]string       // versions the cache file holds or its writer is about to write
	cache    *cacheWriter            // nil without a cache file

	nackVersion map[string]string // version last NACKed per type
	nackCount   map[string]int
}

func newADSClient(p *Proxy) *adsClient {
	a := &adsClient{
		p:           p,
		versions:    map[string]string{},
		lds:         map[string]listenerInfo{},
		cds:         map[string]clusterInfo{},
		eds:         map[string]assignment{},
		raw:         map[string][]*anypb.Any{},
		nackVersion: map[string]string{},
		nackCount:   map[string]int{},
	}
	if path := p.cfg.XDSCache; path != "" {
		a.cache = newCacheWriter(p, path, cacheWriteDelay)
	}
	return a
}

// run keeps one ADS stream open until ctx ends. With several control
// planes it holds one stream at a time and, when that stream ends or cannot
// be opened, moves at once to the next address; only after every address
// failed in a row does it wait, with exponential backoff and jitter. The
// last good configuration keeps serving while no control plane answers.
func (a *adsClient) run(ctx context.Context) {
	if a.cache != nil {
		// The writer ends with ctx, after writing what is pending.
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.cache.run(ctx)
		}()
		defer func() { <-done }()
	}
	servers := a.p.cfg.XDSServers()
	wait := adsBackoffBase
	failures := 0   // attempts since the last stream that got a response
	cur := 0        // index of the control plane to try next
	connected := "" // the control plane of the last stream that got a response
	for {
		addr := servers[cur]
		got, err := a.session(ctx, addr, connected)
		a.p.setADSConnected(addr, false)
		if ctx.Err() != nil {
			return
		}
		if got {
			wait = adsBackoffBase
			failures = 0
			connected = addr
		}
		failures++
		next := (cur + 1) % len(servers)
		if len(servers) > 1 && failures < len(servers) {
			// Another control plane has not been tried since this one
			// was lost: move at once.
			msg := "control plane unreachable; trying the next one, keeping the last good configuration"
			if got {
				msg = "control plane lost; moving to the next one, keeping the last good configuration"
			}
			a.p.log.Warn(msg, "xds", addr, "next", servers[next], "err", err, "had_stream", got)
			cur = next
			continue
		}
		d := wait/2 + rand.N(wait/2+1)
		// Warn when the stream is lost and every tenth failed round; the
		// attempts in between are debug noise while no control plane is up.
		level := slog.LevelDebug
		if failures%(10*len(servers)) == 1 || (len(servers) > 1 && failures == len(servers)) {
			level = slog.LevelWarn
		}
		a.p.log.Log(ctx, level, "no control plane answers; keeping last good configuration", "xds", addr,
			"next", servers[next], "control_planes", len(servers), "err", err, "attempt", failures,
			"retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		wait = min(2*wait, a.p.cfg.ADSBackoffMax)
		cur = next
	}
}

// session runs one ADS stream to the control plane at addr. got reports
// whether any response arrived. last is the control plane of the previous
// stream that got a response ("" if none): a different one is a move,
// logged and counted.
func (a *adsClient) session(ctx context.Context, addr, last string) (got bool, err error) {
	creds := insecure.NewCredentials()
	if a.p.tls != nil {
		creds = a.p.tls.xdsCreds()
	}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: time.Second}))
	if err != nil {
		return false, fmt.Errorf("ads client: %w", err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(sctx)
	if err != nil {
		return false, fmt.Errorf("open ADS stream: %w", err)
	}

	// One sender goroutine owns stream.Send; paced NACKs reach it later.
	sendq := make(chan *discoveryv3.DiscoveryRequest, 16)
	sendErr := make(chan error, 1)
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for {
			select {
			case <-sctx.Done():
				return
			case req := <-sendq:
				if err := stream.Send(req); err != nil {
					sendErr <- err
					cancel()
					return
				}
			}
		}
	}()
	defer func() {
		cancel()
		<-senderDone
	}()
	send := func(req *discoveryv3.DiscoveryRequest) {
		select {
		case sendq <- req:
		case <-sctx.Done():
		}
	}
	var timers []*time.Timer
	defer func() {
		for _, t := range timers {
			t.Stop()
		}
	}()

	nonces := map[string]string{}
	send(a.request(listenerType, nil, ""))
	send(a.request(clusterType, nil, ""))
	if len(a.edsNames) > 0 {
		send(a.request(endpointType, a.edsNames, ""))
	}
	moved := last != "" && last != addr
	// firstSeen records, per type, whether this stream's first response
	// was already reported (the story of a move: same versions or new).
	firstSeen := map[string]bool{}

	for {
		resp, err := stream.Recv()
		if err != nil {
			select {
			case serr := <-sendErr:
				return got, fmt.Errorf("ADS send: %w", serr)
			default:
			}
			return got, fmt.Errorf("ADS receive: %w", err)
		}
		if !got {
			// The stream is open only once the control plane answers:
			// a stream to a stopped process or one that never responds
			// does not count as connected.
			got = true
			a.p.setADSConnected(addr, true)
			if moved {
				a.p.m.adsMoves.Inc()
				a.p.mu.Lock()
				a.p.xds.Moves++
				a.p.mu.Unlock()
			}
			a.p.log.Info("ADS stream open", "xds", addr, "node", a.p.cfg.NodeID, "moved_from", last, "moved", moved)
		}
		t := resp.GetTypeUrl()
		nonces[t] = resp.GetNonce()
		prevVersion := a.versions[t]
		if err := a.accept(resp); err != nil {
			delay := a.nackDelay(t, resp.GetVersionInfo())
			a.p.recordNACK(t, resp.GetVersionInfo(), resp.GetNonce(), err)
			a.p.log.Warn("NACK: xDS response rejected; last good configuration keeps serving",
				"xds", addr, "type", shortType(t), "version", resp.GetVersionInfo(), "nonce", resp.GetNonce(),
				"kept_version", a.versions[t], "err", err, "nack_delay", delay)
			req := a.request(t, a.names(t), resp.GetNonce())
			req.ErrorDetail = &spb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			if delay == 0 {
				send(req)
			} else {
				timers = append(timers, time.AfterFunc(delay, func() { send(req) }))
			}
			continue
		}
		delete(a.nackVersion, t)
		delete(a.nackCount, t)
		unchanged := prevVersion != "" && prevVersion == resp.GetVersionInfo()
		if !firstSeen[t] {
			firstSeen[t] = true
			a.p.log.Info("first response from control plane", "xds", addr, "type", shortType(t),
				"version", resp.GetVersionInfo(), "held_version", prevVersion, "unchanged", unchanged)
		}
		a.versions[t] = resp.GetVersionInfo()
		a.p.recordACK(t, resp.GetVersionInfo())
		a.p.log.Debug("ACK", "xds", addr, "type", shortType(t), "version", resp.GetVersionInfo(), "nonce", resp.GetNonce())
		send(a.request(t, a.names(t), resp.GetNonce()))
		if t == clusterType {
			if names := a.wantEDS(); !slices.Equal(names, a.edsNames) {
				a.edsNames = names
				for n := range a.eds {
					if !slices.Contains(names, n) {
						delete(a.eds, n)
					}
				}
				send(a.request(endpointType, names, nonces[endpointType]))
			}
		}
		// Versions are content: the same version from another control
		// plane (or from the cache file's) is the configuration already
		// applied, so nothing is re-applied and no connection moves.
		if !unchanged && (t == listenerType || t == clusterType || t == endpointType) {
			a.p.apply(maps.Clone(a.lds), maps.Clone(a.cds), maps.Clone(a.eds))
		}
		a.saveCache(addr)
	}
}

// accept decodes and validates resp and, if it is good, stores it as the
// last good resources of its type. A bad response changes nothing.
func (a *adsClient) accept(resp *discoveryv3.DiscoveryResponse) error {
	switch resp.GetTypeUrl() {
	case listenerType:
		l, err := decodeListeners(resp.GetResources())
		if err != nil {
			return err
		}
		if name := a.p.cfg.Listener; name != "" {
			if li, ok := l[name]; ok && !li.api && li.cluster == "" {
				return fmt.Errorf("%w: listener %q has no tcp_proxy cluster", ErrBadResource, name)
			}
		}
		a.lds = l
		a.raw[listenerType] = resp.GetResources()
	case clusterType:
		c, err := decodeClusters(resp.GetResources())
		if err != nil {
			return err
		}
		a.cds = c
		a.raw[clusterType] = resp.GetResources()
	case endpointType:
		e, err := decodeAssignments(resp.GetResources())
		if err != nil {
			return err
		}
		a.eds = e
		a.raw[endpointType] = resp.GetResources()
	default:
		return fmt.Errorf("%w: unexpected type %q", ErrBadResource, resp.GetTypeUrl())
	}
	return nil
}

// request builds a DiscoveryRequest for typeURL carrying the last accepted
// version (the ACK, or for a NACK the previous good version).
func (a *adsClient) request(typeURL string, names []string, nonce string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{
		Node: &corev3.Node{Id: a.p.cfg.NodeID, Cluster: a.p.cfg.NodeCluster,
			UserAgentName: "hachat-proxy"},
		TypeUrl:       typeURL,
		VersionInfo:   a.versions[typeURL],
		ResourceNames: names,
		ResponseNonce: nonce,
	}
}

// names is the resource subscription of typeURL: wildcard for LDS and CDS,
// the EDS names of the known clusters for EDS.
func (a *adsClient) names(typeURL string) []string {
	if typeURL == endpointType {
		return a.edsNames
	}
	return nil
}

// wantEDS lists the EDS resources of the known EDS clusters, sorted.
func (a *adsClient) wantEDS() []string {
	var names []string
	for _, c := range a.cds {
		if c.eds && !slices.Contains(names, c.edsName) {
			names = append(names, c.edsName)
		}
	}
	slices.Sort(names)
	return names
}

// nackDelay paces repeated NACKs of the same version: none the first time,
// then 100ms doubling to 5s.
func (a *adsClient) nackDelay(typeURL, version string) time.Duration {
	if a.nackVersion[typeURL] != version {
		a.nackVersion[typeURL] = version
		a.nackCount[typeURL] = 0
		return 0
	}
	a.nackCount[typeURL]++
	d := nackPaceBase << min(a.nackCount[typeURL]-1, 6)
	return min(d, 5*time.Second)
}

func shortType(t string) string {
	switch t {
	case listenerType:
		return "lds"
	case clusterType:
		return "cds"
	case endpointType:
		return "eds"
	default:
		return t
	}
}

// setADSConnected records whether the ADS stream to the control plane at
// addr is open (has answered).
func (p *Proxy) setADSConnected(addr string, up bool) {
	p.mu.Lock()
	p.xds.Connected = up
	if up {
		p.xds.Address = addr
	}
	p.mu.Unlock()
	if up {
		p.m.adsConnected.Set(1)
		p.m.adsServer.WithLabelValues(addr).Set(1)
	} else {
		p.m.adsConnected.Set(0)
		p.m.adsServer.WithLabelValues(addr).Set(0)
	}
}

func (p *Proxy) recordACK(typeURL, version string) {
	p.m.adsUpdates.WithLabelValues(shortType(typeURL)).Inc()
	p.mu.Lock()
	p.xds.Versions[shortType(typeURL)] = version
	p.xds.Updates++
	p.mu.Unlock()
}

func (p *Proxy) recordNACK(typeURL, version, nonce string, err error) {
	p.m.adsNACKs.WithLabelValues(shortType(typeURL)).Inc()
	p.mu.Lock()
	p.xds.NACKs++
	p.xds.LastNACK = &NACKInfo{Type: shortType(typeURL), Version: version, Nonce: nonce, Error: err.Error(), At: time.Now()}
	p.mu.Unlock()
}
