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
	edsNames []string // EDS resources subscribed to

	nackVersion map[string]string // version last NACKed per type
	nackCount   map[string]int
}

func newADSClient(p *Proxy) *adsClient {
	return &adsClient{
		p:           p,
		versions:    map[string]string{},
		lds:         map[string]listenerInfo{},
		cds:         map[string]clusterInfo{},
		eds:         map[string]assignment{},
		nackVersion: map[string]string{},
		nackCount:   map[string]int{},
	}
}

// run keeps one ADS stream open until ctx ends, reconnecting with
// exponential backoff and jitter. The last good configuration keeps serving
// while the control plane is away.
func (a *adsClient) run(ctx context.Context) {
	wait := adsBackoffBase
	failures := 0
	for {
		got, err := a.session(ctx)
		a.p.setADSConnected(false)
		if ctx.Err() != nil {
			return
		}
		if got {
			wait = adsBackoffBase
			failures = 0
		}
		failures++
		d := wait/2 + rand.N(wait/2+1)
		// Warn when the stream is lost and every tenth failed attempt; the
		// attempts in between are debug noise while the control plane is away.
		level := slog.LevelDebug
		if failures%10 == 1 {
			level = slog.LevelWarn
		}
		a.p.log.Log(ctx, level, "ADS stream to control plane ended; keeping last good configuration", "xds", a.p.cfg.XDS,
			"err", err, "attempt", failures, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		wait = min(2*wait, a.p.cfg.ADSBackoffMax)
	}
}

// session runs one ADS stream. got reports whether any response arrived.
func (a *adsClient) session(ctx context.Context) (got bool, err error) {
	creds := insecure.NewCredentials()
	if a.p.tls != nil {
		creds = a.p.tls.xdsCreds()
	}
	cc, err := grpc.NewClient(a.p.cfg.XDS,
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
	a.p.setADSConnected(true)
	a.p.log.Info("ADS stream open", "xds", a.p.cfg.XDS, "node", a.p.cfg.NodeID)

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
		got = true
		t := resp.GetTypeUrl()
		nonces[t] = resp.GetNonce()
		if err := a.accept(resp); err != nil {
			delay := a.nackDelay(t, resp.GetVersionInfo())
			a.p.recordNACK(t, resp.GetVersionInfo(), resp.GetNonce(), err)
			a.p.log.Warn("NACK: xDS response rejected; last good configuration keeps serving",
				"type", shortType(t), "version", resp.GetVersionInfo(), "nonce", resp.GetNonce(),
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
		a.versions[t] = resp.GetVersionInfo()
		a.p.recordACK(t, resp.GetVersionInfo())
		a.p.log.Debug("ACK", "type", shortType(t), "version", resp.GetVersionInfo(), "nonce", resp.GetNonce())
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
		if t == listenerType || t == clusterType || t == endpointType {
			a.p.apply(maps.Clone(a.lds), maps.Clone(a.cds), maps.Clone(a.eds))
		}
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
	case clusterType:
		c, err := decodeClusters(resp.GetResources())
		if err != nil {
			return err
		}
		a.cds = c
	case endpointType:
		e, err := decodeAssignments(resp.GetResources())
		if err != nil {
			return err
		}
		a.eds = e
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

// setADSConnected records whether the ADS stream is open.
func (p *Proxy) setADSConnected(up bool) {
	p.mu.Lock()
	p.xds.Connected = up
	p.mu.Unlock()
	if up {
		p.m.adsConnected.Set(1)
	} else {
		p.m.adsConnected.Set(0)
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
