package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestPProfAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: ":6060", want: "127.0.0.1:6060"},
		{in: ":0", want: "127.0.0.1:0"},
		{in: "127.0.0.1:0", want: "127.0.0.1:0"},
		{in: "0.0.0.0:6060", want: "0.0.0.0:6060"},
		{in: "[::]:6060", want: "[::]:6060"},
		{in: "localhost:7000", want: "localhost:7000"},
		{in: "6060", bad: true},
	} {
		got, err := pprofAddr(tc.in)
		switch {
		case tc.bad && !errors.Is(err, ErrBadConfig):
			t.Errorf("pprofAddr(%q): err %v, want ErrBadConfig", tc.in, err)
		case !tc.bad && (err != nil || got != tc.want):
			t.Errorf("pprofAddr(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestPProfServes: --pprof serves the pprof index on a port of its own,
// which Shutdown closes; without --pprof nothing listens.
func TestPProfServes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PProf = "127.0.0.1:0"
	var logs strings.Builder
	tel, err := Setup(context.Background(), cfg, "test", &logs)
	if err != nil {
		t.Fatal(err)
	}
	addr := tel.PProfAddr()
	if addr == "" || strings.HasSuffix(addr, ":0") {
		t.Fatalf("PProfAddr %q: want the bound address", addr)
	}
	if !strings.Contains(logs.String(), addr) {
		t.Errorf("the log does not name the pprof address %s: %q", addr, logs.String())
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(body) == 0 {
		t.Fatalf("GET cmdline: %d %q", resp.StatusCode, body)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get("http://" + addr + "/debug/pprof/cmdline"); err == nil {
		resp.Body.Close()
		t.Fatalf("pprof still serves after Shutdown")
	}

	off, err := Setup(context.Background(), DefaultConfig(), "test", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer off.Shutdown(context.Background())
	if a := off.PProfAddr(); a != "" {
		t.Fatalf("PProfAddr %q without --pprof", a)
	}
}
