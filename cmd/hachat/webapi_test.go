package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hachat/hachat/chatclient"
	"github.com/hachat/hachat/webapi"
)

// TestWebAPIEdgeConfig: the edge settings of webapi come from the YAML file
// under the flag names, and a flag overrides the file.
func TestWebAPIEdgeConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "webapi.yaml")
	yaml := "client-start-rate: 0.5\nclient-start-burst: 4\nstart-rate: 20\nstart-burst: 40\n" +
		"allowed-origins: https://www.example.com,https://shop.example.com\ntrusted-proxies: 10.0.0.0/8\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	file := webapiFile{Config: webapi.DefaultConfig(), clientFile: defaultClientFile()}
	err := parseFlags("webapi", "", []string{"--config", path, "--start-burst=50"}, io.Discard, &file, func(fs *flag.FlagSet) {
		file.Config.RegisterFlags(fs)
		file.clientFile.registerFlags(fs)
	})
	if err != nil {
		t.Fatal(err)
	}
	c := file.Config
	if c.ClientStartRate != 0.5 || c.ClientStartBurst != 4 || c.StartRate != 20 || c.StartBurst != 50 ||
		c.AllowedOrigins != "https://www.example.com,https://shop.example.com" || c.TrustedProxies != "10.0.0.0/8" {
		t.Fatalf("config %+v", c)
	}
}

// TestProxyProtocolFromConfig: --proxy-protocol-from comes from the YAML
// file of webapi and of interaction under the flag's name; a bad entry is
// refused before anything starts.
func TestProxyProtocolFromConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "part.yaml")
	if err := os.WriteFile(path, []byte("proxy-protocol-from: 10.250.0.0/24,192.0.2.40\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := webapiFile{Config: webapi.DefaultConfig(), clientFile: defaultClientFile()}
	err := parseFlags("webapi", "", []string{"--config", path}, io.Discard, &file, func(fs *flag.FlagSet) {
		file.Config.RegisterFlags(fs)
		file.clientFile.registerFlags(fs)
	})
	if err != nil || file.ProxyProtocolFrom != "10.250.0.0/24,192.0.2.40" {
		t.Fatalf("proxy-protocol-from %q, err %v", file.ProxyProtocolFrom, err)
	}
	err = runWebAPI(t.Context(), []string{"--http=127.0.0.1:0", "--proxy-protocol-from=10.0.0.0/33"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--proxy-protocol-from") {
		t.Fatalf("bad --proxy-protocol-from: %v", err)
	}
}

// TestClientRetryPolicyConfig: the one retry policy of the chat client is
// configured in one place, under the core-* keys of the YAML file (or
// flags), for webapi as for interaction.
func TestClientRetryPolicyConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "webapi.yaml")
	yaml := "core-retry-for: 4s\ncore-attempt-timeout: 1s\ncore-min-backoff: 2ms\ncore-max-backoff: 50ms\ncore-max-attempts: 5\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	file := webapiFile{Config: webapi.DefaultConfig(), clientFile: defaultClientFile()}
	err := parseFlags("webapi", "", []string{"--config", path, "--core-max-attempts=6"}, io.Discard, &file, func(fs *flag.FlagSet) {
		file.Config.RegisterFlags(fs)
		file.clientFile.registerFlags(fs)
	})
	if err != nil {
		t.Fatal(err)
	}
	want := chatclient.Policy{RetryFor: 4 * time.Second, AttemptTimeout: time.Second, MinBackoff: 2 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxAttempts: 6}
	if got := file.clientFile.Config.Policy; got != want {
		t.Fatalf("policy %+v, want %+v", got, want)
	}
}
