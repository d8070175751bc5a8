package main

import (
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
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
