package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/telemetry"
	"github.com/hachat/hachat/telemetry/telemetrytest"
)

// deadAddr is a loopback address nobody listens on: a control plane that
// is down.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// cachedProxy builds and runs a sidecar on xds (a comma-separated list)
// with the cache file path.
func cachedProxy(t *testing.T, xds, path string) *Proxy {
	t.Helper()
	cfg := testConfig(xds)
	cfg.XDSCache = path
	p, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startProxy(t, p)
	return p
}

// runFor runs p until the returned stop is called (which waits for Run).
func runFor(t *testing.T, p *Proxy) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
		}
	}
}

// readCacheVersions returns the versions (by short type) in the cache file,
// nil while there is none or it does not parse (a corrupt file the test
// wrote, not yet replaced).
func readCacheVersions(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var f cacheFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil
	}
	out := map[string]string{}
	for _, ty := range f.Types {
		out[shortType(ty.Type)] = ty.Version
	}
	return out
}

// healthz returns the status code of the sidecar's /healthz.
func healthz(t *testing.T, p *Proxy) int {
	t.Helper()
	resp, err := http.Get("http://" + p.AdminAddr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestCacheRoundTrip: a sidecar writes what it accepted; a sidecar started
// later on the same file, with no control plane answering at all, routes to
// the primary from it.
func TestCacheRoundTrip(t *testing.T) {
	a := newFakeCore(t, "a", "primary", 1)
	b := newFakeCore(t, "b", "backup", 1)
	cp := newControlPlane(t)
	cp.set("test-sidecar", "1", pairResources(a, b, 100*time.Millisecond, 2))
	path := filepath.Join(t.TempDir(), "state", "sidecar.xds.json")

	cfg := testConfig(cp.addr)
	cfg.XDSCache = path
	first, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if got := metricValue(first.m.cacheLoads.WithLabelValues("absent")); got != 1 {
		t.Fatalf("absent loads = %v, want 1 (no file yet)", got)
	}
	stop := runFor(t, first)
	waitFor(t, 5*time.Second, "cache file with every type at version 1", func() bool {
		v := readCacheVersions(t, path)
		return v["lds"] == "1" && v["cds"] == "1" && v["eds"] == "1"
	})
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v, mode %v, want 0600", err, st.Mode().Perm())
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp")); len(leftovers) > 0 {
		t.Fatalf("temporary files left beside the cache: %v", leftovers)
	}
	stop()
	cp.stop()

	// Cold start: no control plane answers at any of two addresses.
	p := cachedProxy(t, deadAddr(t)+","+deadAddr(t), path)
	if got := metricValue(p.m.cacheLoads.WithLabelValues("ok")); got != 1 {
		t.Fatalf("ok loads = %v, want 1", got)
	}
	d := p.Dump()
	if d.XDS.Cache == nil || !d.XDS.Cache.Loaded || d.XDS.Cache.LoadedVersions["cds"] != "1" {
		t.Fatalf("dump cache = %+v, want loaded at version 1", d.XDS.Cache)
	}
	if code := healthz(t, p); code != http.StatusOK {
		t.Fatalf("healthz = %d from the cache, want 200", code)
	}
	waitFor(t, 5*time.Second, "traffic to the primary from the cached configuration", func() bool {
		return statusVia(p.Addr().String()) == "a"
	})
	// Its own checks still fail over without any control plane.
	a.stop()
	waitFor(t, 5*time.Second, "traffic to the backup", func() bool { return statusVia(p.Addr().String()) == "b" })
}

// TestCacheRefused: a cache file that is truncated, altered, of another
// format or node, or that holds a resource failing validation is refused
// with a reason, counted, and changes nothing: the sidecar starts
// unconfigured and takes the control plane's configuration when it comes.
func TestCacheRefused(t *testing.T) {
	a := newFakeCore(t, "a", "primary", 1)
	b := newFakeCore(t, "b", "backup", 1)
	good := func() cachedConfig {
		c := cachedConfig{node: "test-sidecar", controlPlane: "127.0.0.1:7200", savedAt: time.Now(),
			versions: map[string]string{}, resources: map[string][]*anypb.Any{}}
		for typ, items := range pairResources(a, b, 100*time.Millisecond, 2) {
			c.versions[typ] = "1"
			for _, it := range items {
				x, err := anypb.New(it)
				if err != nil {
					t.Fatal(err)
				}
				c.resources[typ] = append(c.resources[typ], x)
			}
		}
		return c
	}
	encode := func(c cachedConfig) []byte {
		b, err := encodeCache(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name    string
		content func() []byte
		reason  string
	}{
		{"truncated", func() []byte { b := encode(good()); return b[:len(b)/2] }, "not a cache document"},
		{"empty", func() []byte { return nil }, "not a cache document"},
		{"altered resource", func() []byte {
			var f cacheFile
			json.Unmarshal(encode(good()), &f)
			f.Types[1].Resources[0][len(f.Types[1].Resources[0])-1] ^= 0xff
			b, _ := json.Marshal(f)
			return b
		}, "checksum mismatch"},
		{"altered version", func() []byte {
			return []byte(strings.Replace(string(encode(good())), `"version": "1"`, `"version": "9"`, 1))
		}, "checksum mismatch"},
		{"other format", func() []byte {
			var f cacheFile
			json.Unmarshal(encode(good()), &f)
			f.Format = "hachat-xds-cache/0"
			f.Checksum = cacheChecksum(&f)
			b, _ := json.Marshal(f)
			return b
		}, "format"},
		{"other node", func() []byte { c := good(); c.node = "sidecar-other"; return encode(c) }, "written for node"},
		{"no clusters", func() []byte {
			c := good()
			delete(c.versions, resource.ClusterType)
			return encode(c)
		}, "no cds"},
		{"invalid cluster", func() []byte {
			c := good()
			bad := edsCluster("chatcore", 100*time.Millisecond, time.Second, 2, 1)
			bad.HealthChecks[0].Timeout = nil // fails Validate, as on the wire
			x, _ := anypb.New(bad)
			c.resources[resource.ClusterType] = []*anypb.Any{x}
			return encode(c)
		}, "cds version 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sidecar.xds.json")
			if err := os.WriteFile(path, tc.content(), 0o600); err != nil {
				t.Fatal(err)
			}
			cp := newControlPlane(t)
			p := cachedProxy(t, cp.addr, path)
			if got := metricValue(p.m.cacheLoads.WithLabelValues("refused")); got != 1 {
				t.Fatalf("refused loads = %v, want 1", got)
			}
			d := p.Dump()
			if d.Configured || d.XDS.Cache == nil || d.XDS.Cache.Loaded || !strings.Contains(d.XDS.Cache.LoadError, tc.reason) {
				t.Fatalf("configured %v, cache %+v: want refused because %q", d.Configured, d.XDS.Cache, tc.reason)
			}
			if code := healthz(t, p); code != http.StatusServiceUnavailable {
				t.Fatalf("healthz = %d with a refused cache, want 503", code)
			}
			// The control plane's configuration is taken and replaces the
			// refused file.
			cp.set("test-sidecar", "2", pairResources(a, b, 100*time.Millisecond, 2))
			waitFor(t, 5*time.Second, "traffic to the primary", func() bool { return statusVia(p.Addr().String()) == "a" })
			waitFor(t, 5*time.Second, "the cache file rewritten at version 2", func() bool {
				return readCacheVersions(t, path)["cds"] == "2"
			})
		})
	}
	if _, err := decodeCache([]byte("{}"), "n"); !errors.Is(err, ErrCacheFile) {
		t.Fatalf("decodeCache error %v is not ErrCacheFile", err)
	}
}

// TestCacheStaleReplacedByNewer: a sidecar starts from a cache file that
// sends traffic to a; the control plane answers with a newer version that
// holds only b. The sidecar asked with the cached versions, applies the
// newer ones, routes to b and rewrites the file.
func TestCacheStaleReplacedByNewer(t *testing.T) {
	a := newFakeCore(t, "a", "primary", 1)
	b := newFakeCore(t, "b", "primary", 2)
	path := filepath.Join(t.TempDir(), "sidecar.xds.json")
	c := cachedConfig{node: "test-sidecar", controlPlane: "old", savedAt: time.Now().Add(-time.Hour),
		versions: map[string]string{}, resources: map[string][]*anypb.Any{}}
	stale := pairResources(a, b, 100*time.Millisecond, 2)
	stale[resource.EndpointType] = []types.Resource{loadAssignment("chatcore",
		ep{a.addr, 0, corev3.HealthStatus_HEALTHY, a.name, "primary", 1})}
	for typ, items := range stale {
		c.versions[typ] = "old"
		for _, it := range items {
			x, _ := anypb.New(it)
			c.resources[typ] = append(c.resources[typ], x)
		}
	}
	blob, err := encodeCache(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		t.Fatal(err)
	}

	cp := newControlPlane(t)
	newer := pairResources(a, b, 100*time.Millisecond, 2)
	newer[resource.EndpointType] = []types.Resource{loadAssignment("chatcore",
		ep{b.addr, 0, corev3.HealthStatus_HEALTHY, b.name, "primary", 2})}
	p := cachedProxy(t, cp.addr, path)
	// Before any control plane answers, the stale file routes to a.
	waitFor(t, 5*time.Second, "traffic to a from the cache", func() bool { return statusVia(p.Addr().String()) == "a" })
	cc, err := grpc.NewClient(p.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if resp, err := chatpb.NewChatClient(cc).Status(t.Context(), &chatpb.StatusRequest{}); err != nil || resp.GetName() != "a" {
		t.Fatalf("long-lived connection: %v %v", resp, err)
	}

	cp.set("test-sidecar", "new", newer)
	waitFor(t, 5*time.Second, "eds version new applied", func() bool { return p.Dump().XDS.Versions["eds"] == "new" })
	waitFor(t, 5*time.Second, "traffic to b", func() bool { return statusVia(p.Addr().String()) == "b" })
	waitFor(t, 5*time.Second, "the cache file at the new versions, its write counted", func() bool {
		v := readCacheVersions(t, path)
		c := p.Dump().XDS.Cache
		return v["lds"] == "new" && v["cds"] == "new" && v["eds"] == "new" && c != nil && c.Writes >= 1
	})
	// The first requests of the stream carried the cached versions.
	cp.mu.Lock()
	asked := map[string]string{}
	for _, r := range cp.requests {
		if r.nonce == "" {
			asked[r.typeURL] = r.version
		}
	}
	cp.mu.Unlock()
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.EndpointType} {
		if asked[typ] != "old" {
			t.Errorf("first %s request carried version %q, want the cached \"old\"", shortType(typ), asked[typ])
		}
	}
	if d := p.Dump(); d.XDS.Cache == nil || d.XDS.Cache.LoadedVersions["eds"] != "old" || d.XDS.Cache.Writes < 1 {
		t.Errorf("dump cache = %+v, want loaded at old and written since", d.XDS.Cache)
	}
}

// TestMoveBetweenControlPlanes: two control planes serve the same content
// under the same versions. When the sidecar's control plane goes away it
// moves to the other at once, re-applies nothing, keeps every client
// connection, and still fails over on its own checks.
func TestMoveBetweenControlPlanes(t *testing.T) {
	a := newFakeCore(t, "a", "primary", 1)
	b := newFakeCore(t, "b", "backup", 1)
	cp1, cp2 := newControlPlane(t), newControlPlane(t)
	cp1.set("test-sidecar", "v1", pairResources(a, b, 100*time.Millisecond, 2))
	cp2.set("test-sidecar", "v1", pairResources(a, b, 100*time.Millisecond, 2))
	cfg := testConfig(cp1.addr + "," + cp2.addr)
	cfg.ADSBackoffMax = 10 * time.Second // a move must not wait for a backoff
	p, err := New(cfg, telemetry.Discard())
	if err != nil {
		t.Fatal(err)
	}
	startProxy(t, p)
	waitFor(t, 5*time.Second, "ACK from the first control plane", func() bool {
		return cp1.acked(resource.EndpointType, "v1")
	})
	if got := metricValue(p.m.adsServer.WithLabelValues(cp1.addr)); got != 1 {
		t.Fatalf("control plane gauge for %s = %v, want 1", cp1.addr, got)
	}
	cc, name := longLived(t, p.Addr().String())
	if name != "a" {
		t.Fatalf("long-lived connection on %q", name)
	}
	conns, updates := metricValue(p.m.connsTotal), p.Dump().XDS.Updates

	start := time.Now()
	cp1.stop()
	waitFor(t, 3*time.Second, "the stream moved to the second control plane", func() bool {
		d := p.Dump()
		return d.XDS.Connected && d.XDS.Address == cp2.addr
	})
	t.Logf("moved to the second control plane in %v", time.Since(start).Round(time.Millisecond))
	if got := metricValue(p.m.adsMoves); got != 1 {
		t.Errorf("moves = %v, want 1", got)
	}
	if got := metricValue(p.m.adsServer.WithLabelValues(cp1.addr)); got != 0 {
		t.Errorf("gauge for the lost control plane = %v, want 0", got)
	}
	if got := metricValue(p.m.adsServer.WithLabelValues(cp2.addr)); got != 1 {
		t.Errorf("gauge for the new control plane = %v, want 1", got)
	}
	waitFor(t, 5*time.Second, "ACK from the second control plane", func() bool {
		return cp2.acked(resource.EndpointType, "v1")
	})
	d := p.Dump()
	if d.XDS.Updates <= updates || d.XDS.Versions["eds"] != "v1" {
		t.Errorf("updates %d (before %d), versions %v", d.XDS.Updates, updates, d.XDS.Versions)
	}
	if got := metricValue(p.m.connsTotal); got != conns {
		t.Errorf("client connections went from %v to %v: the move reconnected clients", conns, got)
	}
	if got := metricValue(p.m.closedConns); got != 0 {
		t.Errorf("%v connections closed by the move", got)
	}
	if resp, err := chatpb.NewChatClient(cc).Status(t.Context(), &chatpb.StatusRequest{}); err != nil || resp.GetName() != "a" {
		t.Errorf("long-lived connection after the move: %v %v", resp, err)
	}

	// The first control plane comes back and the second goes: the sidecar
	// moves back.
	cp1.start(cp1.addr)
	cp1.set("test-sidecar", "v1", pairResources(a, b, 100*time.Millisecond, 2))
	cp2.stop()
	waitFor(t, 5*time.Second, "the stream back on the first control plane", func() bool {
		d := p.Dump()
		return d.XDS.Connected && d.XDS.Address == cp1.addr
	})
	// The primary dies: own checks fail over as ever.
	a.stop()
	waitFor(t, 5*time.Second, "traffic to the backup", func() bool { return statusVia(p.Addr().String()) == "b" })
}

// TestCacheWriteDeferred: the cache file is written off the ADS loop, a
// delay after the first change not yet written, with the latest
// configuration by then: three versions accepted within the delay cost one
// write (a failover's burst of updates used to cost every sidecar a write
// with two fsyncs per update, while the cores waited on the same disk). A
// stopping sidecar writes what is pending at once.
func TestCacheWriteDeferred(t *testing.T) {
	for _, tc := range []struct {
		name     string
		delay    time.Duration
		versions []string
		stop     bool // stop the sidecar before the delay ends
	}{
		{"changes within the delay are one write of the last", 2 * time.Second, []string{"1", "2", "3"}, false},
		{"a stop writes what is pending", time.Hour, []string{"1", "2"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeCore(t, "a", "primary", 1)
			b := newFakeCore(t, "b", "backup", 1)
			cp := newControlPlane(t)
			path := filepath.Join(t.TempDir(), "sidecar.xds.json")
			cp.set("test-sidecar", tc.versions[0], pairResources(a, b, 100*time.Millisecond, 2))
			cfg := testConfig(cp.addr)
			cfg.XDSCache = path
			p, err := New(cfg, telemetry.Discard())
			if err != nil {
				t.Fatal(err)
			}
			p.ads.cache.delay = tc.delay
			stop := runFor(t, p)
			defer cp.stop()
			for _, v := range tc.versions {
				cp.set("test-sidecar", v, pairResources(a, b, 100*time.Millisecond, 2))
				waitFor(t, 5*time.Second, "eds version "+v+" applied", func() bool { return p.Dump().XDS.Versions["eds"] == v })
			}
			last := tc.versions[len(tc.versions)-1]
			if tc.stop {
				stop()
			} else {
				defer stop()
			}
			waitFor(t, 10*time.Second, "the cache file at version "+last+", its write counted", func() bool {
				v := readCacheVersions(t, path)
				return v["lds"] == last && v["cds"] == last && v["eds"] == last &&
					metricValue(p.m.cacheWrites.WithLabelValues("ok")) >= 1
			})
			if got := metricValue(p.m.cacheWrites.WithLabelValues("ok")); got != 1 {
				t.Errorf("cache writes = %v, want 1 (the versions %v accepted within %v)", got, tc.versions, tc.delay)
			}
		})
	}
}

// TestCacheWriterBacksOff: a cache file that cannot be written is retried
// less and less often, logged as an error once, and written as soon as the
// disk takes it again, with a line saying how many writes failed before.
func TestCacheWriterBacksOff(t *testing.T) {
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{0, time.Millisecond},
		{1, 2 * time.Millisecond},
		{3, 8 * time.Millisecond},
		{6, 64 * time.Millisecond},
		{7, 64 * time.Millisecond},
		{1000, 64 * time.Millisecond},
	} {
		w := &cacheWriter{delay: time.Millisecond, failures: tc.failures}
		if got := w.nextDelay(); got != tc.want {
			t.Errorf("after %d failures: next delay %v, want %v", tc.failures, got, tc.want)
		}
	}

	dir := t.TempDir()
	blocker := filepath.Join(dir, "not-a-dir")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "sidecar.xds.json") // its parent is a file: every write fails
	var logs telemetrytest.LogBuffer
	tel := telemetry.Discard()
	tel.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(testConfig(deadAddr(t)), tel)
	if err != nil {
		t.Fatal(err)
	}
	w := newCacheWriter(p, path, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	defer func() { cancel(); <-done }()

	start := time.Now()
	w.put(cachedConfig{node: "n", savedAt: start, versions: map[string]string{listenerType: "1"}})
	const attempts = 7
	waitFor(t, 10*time.Second, "7 failed writes", func() bool {
		return metricValue(p.m.cacheWrites.WithLabelValues("error")) >= attempts
	})
	// Seven attempts wait 1+2+4+8+16+32+64 ms at least between them (the
	// first after the delay); a retry at the delay each time would take 7.
	if took, least := time.Since(start), 127*time.Millisecond; took < least {
		t.Errorf("%d failed writes took %v, want at least %v (backing off)", attempts, took, least)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("%d error lines for one run of failures, want 1:\n%s", n, logs.String())
	}

	if err := os.Remove(blocker); err != nil { // the disk takes it again
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the file written once it can be", func() bool {
		return metricValue(p.m.cacheWrites.WithLabelValues("ok")) == 1
	})
	if v := readCacheVersions(t, path); v["lds"] != "1" {
		t.Errorf("cache file versions %v, want lds 1", v)
	}
	if !strings.Contains(logs.String(), "xDS cache file written again") {
		t.Errorf("no line for the write that ended the failures:\n%s", logs.String())
	}
}
