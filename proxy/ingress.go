package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/hachat/hachat/telemetry"
)

// Names of the edge's public listeners in LDS (published by the control
// plane with --ingress-customer and --ingress-agent; see package xds).
const (
	// CustomerListener carries customers (browsers, the widget, GMS
	// clients) to the webapi instances.
	CustomerListener = "ingress-customer"
	// AgentListener carries agents and supervisors to the interaction
	// instances.
	AgentListener = "ingress-agent"
)

// EdgeNodeCluster is the xDS node cluster the edge announces: the control
// plane sends the ingress listeners only to nodes of this cluster (a sidecar,
// or an Envoy sidecar, never gets them). It equals xds.EdgeNodeCluster.
const EdgeNodeCluster = "hachat-edge"

// IngressConfig is the edge: the proxy in ingress mode, the one address of
// customers and the one address of agents, in front of every webapi and
// interaction instance. Base carries what both listeners share (node id,
// control plane, admin, breakers, certificates for ADS and admin); Listen
// of Base is ignored.
type IngressConfig struct {
	// Base is the shared proxy configuration. Its NodeID names the edge;
	// the two ADS streams announce NodeID-customer and NodeID-agent.
	Base Config
	// Customer is the customers' address (webapi instances behind it).
	Customer string
	// Agent is the agents' address (interaction instances behind it);
	// empty: the edge serves customers only.
	Agent string
	// ProxyProtocol sends the instances a PROXY protocol v2 header at the
	// start of each connection (Config.ProxyProtocol).
	ProxyProtocol bool
	// UpstreamSource, if valid, is the address the edge dials the
	// instances from (Config.UpstreamSource).
	UpstreamSource netip.Addr
}

// Ingress is a running edge: one proxy per public listener in one process,
// each steered by the control plane like a sidecar, each passing bytes
// through (L4) to the instances its own TCP checks see up, least
// connections first. A killed instance refuses its next connect or check
// and leaves rotation at once; its clients' connections end and they
// reconnect through the same address to another instance.
type Ingress struct {
	// Customer serves CustomerListener; Agent serves AgentListener (nil
	// without IngressConfig.Agent).
	Customer, Agent *Proxy
}

// NewIngress binds the edge's addresses (the admin address, if any, is the
// customer proxy's; its /metrics shows both listeners, labelled listener=).
func NewIngress(cfg IngressConfig, tel *telemetry.Telemetry) (*Ingress, error) {
	if cfg.Customer == "" {
		return nil, fmt.Errorf("%w: ingress needs a customer address", ErrConfig)
	}
	if _, _, err := net.SplitHostPort(cfg.Customer); err != nil {
		return nil, fmt.Errorf("%w: customer %q: %v", ErrConfig, cfg.Customer, err)
	}
	one := func(listener, listen, admin, suffix string) (*Proxy, error) {
		c := cfg.Base
		c.Ingress = true
		c.ProxyProtocol = cfg.ProxyProtocol
		c.UpstreamSource = cfg.UpstreamSource
		c.Listener = listener
		c.Listen = listen
		c.Admin = admin
		c.NodeID = cfg.Base.NodeID + "-" + suffix
		c.NodeCluster = EdgeNodeCluster
		c.metricsListener = suffix
		return New(c, tel)
	}
	in := &Ingress{}
	var err error
	if in.Customer, err = one(CustomerListener, cfg.Customer, cfg.Base.Admin, "customer"); err != nil {
		return nil, err
	}
	if cfg.Agent != "" {
		if in.Agent, err = one(AgentListener, cfg.Agent, "", "agent"); err != nil {
			in.Customer.ln.Close()
			if in.Customer.adminLn != nil {
				in.Customer.adminLn.Close()
			}
			return nil, err
		}
	}
	return in, nil
}

// Run serves both listeners until ctx is done or one of them fails; it
// stops the other before it returns.
func (in *Ingress) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, p := range []*Proxy{in.Customer, in.Agent} {
		if p == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Run(ctx)
			cancel()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
