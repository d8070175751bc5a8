package webapi

import (
	"context"
	"flag"
	"reflect"
	"testing"
	"time"

	"github.com/hachat/hachat/telemetry"
)

func TestRegisterFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("webapi", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"--http=127.0.0.1:9999", "--core=a:1,b:2", "--service=sales", "--max-body=1024",
		"--sse-heartbeat=2s", "--retry-budget=0s", "--core-timeout=1s", "--client-start-rate=0.5", "--client-start-burst=3",
		"--start-rate=7", "--start-burst=9", "--allowed-origins=https://a.example", "--trusted-proxies=10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{HTTP: "127.0.0.1:9999", Core: "a:1,b:2", Service: "sales", MaxBody: 1024,
		SSEHeartbeat: 2 * time.Second, RetryBudget: 0, CoreTimeout: time.Second, ClientStartRate: 0.5, ClientStartBurst: 3,
		StartRate: 7, StartBurst: 9, AllowedOrigins: "https://a.example", TrustedProxies: "10.0.0.0/8"}
	if cfg != want {
		t.Errorf("config = %+v, want %+v", cfg, want)
	}
	// The flags and the yaml keys are the same set of names.
	keys := map[string]bool{}
	ct := reflect.TypeOf(Config{})
	for i := range ct.NumField() {
		keys[ct.Field(i).Tag.Get("yaml")] = true
	}
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !keys[f.Name] {
			t.Errorf("flag --%s has no yaml key", f.Name)
		}
	})
	if n != len(keys) {
		t.Errorf("%d flags for %d yaml keys", n, len(keys))
	}
}

func TestRunBadAddress(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HTTP = "127.0.0.1:notaport"
	tel := telemetry.Discard()
	s, err := New(cfg, startFakeCore(t, newFakeCore(), tel), tel)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("Run on a bad address returned nil")
	}
}

func TestNewRefusesBadEdgeConfig(t *testing.T) {
	tel := telemetry.Discard()
	client := startFakeCore(t, newFakeCore(), tel)
	for name, mutate := range map[string]func(*Config){
		"negative client rate":   func(c *Config) { c.ClientStartRate = -1 },
		"zero client burst":      func(c *Config) { c.ClientStartBurst = 0 },
		"zero global burst":      func(c *Config) { c.StartBurst = 0 },
		"origin with a path":     func(c *Config) { c.AllowedOrigins = "https://a.example/chat" },
		"origin wildcard":        func(c *Config) { c.AllowedOrigins = "*" },
		"proxy that is not a ip": func(c *Config) { c.TrustedProxies = "lb.example" },
	} {
		cfg := DefaultConfig()
		mutate(&cfg)
		if _, err := New(cfg, client, telemetry.Discard()); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}
