package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hachat/hachat/mtls"
)

func TestXDSBootstrapCommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		want     []string
		wantErr  error
		anyError bool
	}{
		{"envoy yaml", []string{"envoy-bootstrap", "--xds", "127.0.0.1:7200", "--node-id", "envoy-1", "--admin", "127.0.0.1:9901"},
			[]string{"ads_config:", "cluster_name: hachat_xds", "id: envoy-1", "port_value: 9901", "port_value: 7200"}, nil, false},
		{"envoy json", []string{"envoy-bootstrap", "--format", "json", "--node-id", "e2"},
			[]string{`"dynamic_resources"`, `"id": "e2"`}, nil, false},
		{"grpc", []string{"grpc-bootstrap", "--xds", "127.0.0.1:7200", "--node-id", "webapi-1"},
			[]string{`"server_uri": "127.0.0.1:7200"`, `"type": "insecure"`, `"xds_v3"`, `"id": "webapi-1"`}, nil, false},
		{"bad address", []string{"envoy-bootstrap", "--xds", "nope"}, nil, nil, true},
		{"unknown flag", []string{"grpc-bootstrap", "--bogus"}, nil, errUsage, false},
		{"stray argument", []string{"grpc-bootstrap", "extra"}, nil, errUsage, false},
		{"help", []string{"envoy-bootstrap", "--help"}, nil, flag.ErrHelp, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errw strings.Builder
			err := runXDS(context.Background(), tt.args, &out, &errw)
			switch {
			case tt.anyError:
				if err == nil {
					t.Fatalf("no error; output %s", out.String())
				}
				return
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("err = %v (%s)", err, errw.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestXDSRejectsBadConfig(t *testing.T) {
	var out, errw strings.Builder
	err := runXDS(context.Background(), []string{"--health-interval", "0s"}, &out, &errw)
	if err == nil || !strings.Contains(err.Error(), "health-interval") {
		t.Errorf("runXDS with zero health interval = %v", err)
	}
}

func TestGRPCBootstrapFromState(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if _, err := mtls.Init(certs, "example.org", []mtls.Part{{Kind: mtls.KindWebAPI, Name: "webapi-1"}}, false); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "demo.json")
	doc := `{"supervisor": 1, "parts": [
		{"name": "core-a", "kind": "core", "grpc": "127.0.0.1:7100", "state": "running"},
		{"name": "xds", "kind": "xds", "grpc": "127.0.0.1:7200", "state": "running"},
		{"name": "xds-2", "kind": "xds", "grpc": "127.0.0.1:7210", "state": "running"}],
		"credentials": {"certDir": "certs"}}`
	if err := os.WriteFile(state, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errw strings.Builder
	if err := runXDS(context.Background(), []string{"grpc-bootstrap", "--node-id", "webapi-1", "--state", state}, &out, &errw); err != nil {
		t.Fatalf("%v: %s", err, errw.String())
	}
	for _, w := range []string{`"server_uri": "127.0.0.1:7200"`, `"server_uri": "127.0.0.1:7210"`, `"type": "tls"`,
		`"plugin_name": "file_watcher"`, filepath.Join(certs, "webapi-1.pem"), filepath.Join(certs, "ca.pem")} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("bootstrap lacks %q:\n%s", w, out.String())
		}
	}
	// An explicit cert dir without the named certificate is an error.
	err := runXDS(context.Background(), []string{"grpc-bootstrap", "--node-id", "nobody", "--cert-dir", certs}, &out, &errw)
	if err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Errorf("missing certificate: %v", err)
	}
	// Envoy from the same state: mTLS to the control plane, SAN of the
	// state's trust domain.
	out.Reset()
	if err := runXDS(context.Background(), []string{"envoy-bootstrap", "--node-id", "webapi-1", "--state", state}, &out, &errw); err != nil {
		t.Fatalf("%v: %s", err, errw.String())
	}
	for _, w := range []string{"envoy.transport_sockets.tls", "spiffe://example.org/xds/", "hachat-cert", "port_value: 7200"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("envoy bootstrap lacks %q:\n%s", w, out.String())
		}
	}
}
