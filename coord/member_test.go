package coord

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // "" : valid
		cluster string // with no error: the initial cluster etcd gets
	}{
		{"default: alone", func(*Config) {}, "", "etcd-1=http://127.0.0.1:7402"},
		{"three", func(c *Config) { c.InitialCluster = "etcd-1=127.0.0.1:7402, etcd-2=127.0.0.1:7412,etcd-3=https://h:1" }, "",
			"etcd-1=http://127.0.0.1:7402,etcd-2=http://127.0.0.1:7412,etcd-3=https://h:1"},
		{"not naming itself", func(c *Config) { c.InitialCluster = "etcd-2=127.0.0.1:7412" }, "does not name this member", ""},
		{"bad entry", func(c *Config) { c.InitialCluster = "etcd-1" }, "not name=host:port", ""},
		{"no name", func(c *Config) { c.Name = "" }, "missing name", ""},
		{"no peer", func(c *Config) { c.Peer = "" }, "required", ""},
		{"election too short", func(c *Config) { c.ElectionMs = 100 }, "election-ms", ""},
		{"half the tls", func(c *Config) { c.TLS.CA = "ca.pem" }, "tls", ""},
		{"in a pod: all interfaces, advertised by name", func(c *Config) {
			c.Name, c.Client, c.Peer = "coordination-0", "0.0.0.0:7401", "0.0.0.0:7402"
			c.ClientAdvertise, c.PeerAdvertise = "coordination-0.coordination:7401", "coordination-0.coordination:7402"
		}, "", "coordination-0=http://coordination-0.coordination:7402"},
		{"all interfaces, not advertised", func(c *Config) { c.Peer = "0.0.0.0:7402" }, "set peer-advertise", ""},
		{"client on all interfaces, not advertised", func(c *Config) { c.Client = "[::]:7401" }, "set client-advertise", ""},
		{"advertising all interfaces", func(c *Config) { c.Peer, c.PeerAdvertise = "0.0.0.0:7402", "0.0.0.0:7402" }, "cannot be dialled", ""},
		{"listening on a name", func(c *Config) { c.Peer = "coordination-0.coordination:7402" }, "want ip:port to listen on", ""},
		{"advertise without port", func(c *Config) { c.Client, c.ClientAdvertise = "0.0.0.0:7401", "coordination-0" }, "client-advertise", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := c.initialCluster(); got != tt.cluster {
					t.Errorf("initial cluster %q, want %q", got, tt.cluster)
				}
				return
			}
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
