package xds

import (
	"errors"
	"testing"

	"github.com/hachat/hachat/membership"
)

func TestConfigAdvertise(t *testing.T) {
	tests := []struct {
		name             string
		grpcAdv, httpAdv string
		ok               bool
	}{
		{"none", "", "", true},
		{"pod ip", "10.4.0.9:7200", "10.4.0.9:7201", true},
		{"host name", "xds-0.xds:7200", "", false},
		{"unspecified", "", "0.0.0.0:7201", false},
		{"no port", "", "10.4.0.9", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.GRPCAdvertise, c.HTTPAdvertise = tc.grpcAdv, tc.httpAdv
			err := c.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrBadConfig) || !errors.Is(err, membership.ErrBadAdvertise)) {
				t.Fatalf("Validate = %v, want ErrBadConfig and ErrBadAdvertise", err)
			}
		})
	}
}
