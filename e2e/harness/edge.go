package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/hachat/hachat/demo"
	"github.com/hachat/hachat/proxy"
)

// Entrypoints are the plan's customer and agent addresses (the edge's from
// demo.StageMesh on), as the state file records them.
func (c *Cluster) Entrypoints() demo.Entrypoints { return c.plan.Entrypoints }

// EdgeCustomer is a customer API client through the customers' entrypoint.
func (c *Cluster) EdgeCustomer() *GMS {
	return &GMS{Base: c.Entrypoints().Customer, Service: c.Service(), HTTP: &http.Client{Timeout: 15 * time.Second}}
}

// EdgeAgents is an agent API client through the agents' entrypoint.
func (c *Cluster) EdgeAgents() *AgentAPI {
	return &AgentAPI{Base: c.Entrypoints().Agent, HTTP: &http.Client{Timeout: 15 * time.Second}, Accounts: c.creds.Accounts}
}

// StartSessionsVia is StartSessions with pool agents through the given
// customer and agent clients (the edge's, for instance).
func (c *Cluster) StartSessionsVia(t testing.TB, gms *GMS, agents *AgentAPI, n int) []*Session {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = c.nextPoolAgent(t)
	}
	return StartSessions(t, gms, agents, ids, n)
}

// ProxyDump reads the named proxy part's /proxy/v1/clusters (the edge's
// shows its customer listener).
func (c *Cluster) ProxyDump(name string) (proxy.Dump, error) {
	var d proxy.Dump
	resp, err := c.quick().Get(c.URL(name) + "/proxy/v1/clusters")
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("%s: %s", name, resp.Status)
	}
	return d, json.NewDecoder(resp.Body).Decode(&d)
}

// UpstreamsUp returns the addresses of cluster's endpoints that the named
// proxy's own checks see up.
func (c *Cluster) UpstreamsUp(name, cluster string) ([]string, error) {
	d, err := c.ProxyDump(name)
	if err != nil {
		return nil, err
	}
	var up []string
	for _, cl := range d.Clusters {
		if cl.Name != cluster {
			continue
		}
		for _, ep := range cl.Endpoints {
			if ep.Health == "up" && ep.EDSHealth != "REMOVED" {
				up = append(up, ep.Address)
			}
		}
	}
	return up, nil
}

// EventsAfter reopens the push channel the way a browser's EventSource
// does after a cut: with Last-Event-ID set to the last index it saw.
func (c *Chat) EventsAfter(ctx context.Context, lastEventID uint64) (*Stream, error) {
	q := url.Values{"userId": {c.UserID}, "secureKey": {c.SecureKey}}
	h := http.Header{"Last-Event-Id": {strconv.FormatUint(lastEventID, 10)}}
	return OpenSSE(ctx, c.Base+c.path("events")+"?"+q.Encode(), h)
}
