package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// cacheFormat names the layout of the xDS cache file; a file of any other
// format is refused.
const cacheFormat = "hachat-xds-cache/1"

// ErrCacheFile marks an xDS cache file the sidecar refuses: unreadable,
// truncated, altered, of another format or of another node. The sidecar
// carries on without it.
var ErrCacheFile = errors.New("xds cache file refused")

// cacheTypes are the xDS types kept in the cache file, in file order.
var cacheTypes = []string{listenerType, clusterType, endpointType}

// cachedConfig is a last accepted configuration as the cache file holds
// it: per type URL the version and the resources exactly as the control
// plane sent them.
type cachedConfig struct {
	node         string
	controlPlane string // the control plane the configuration came from
	savedAt      time.Time
	versions     map[string]string
	resources    map[string][]*anypb.Any
}

// cacheFile is the JSON document on disk. Resources are the serialized
// Any messages (base64 in JSON); Checksum is the SHA-256 of everything
// else (cacheChecksum), so a truncated or altered file is detected before
// any resource is decoded.
type cacheFile struct {
	Format       string      `json:"format"`
	Node         string      `json:"node"`
	ControlPlane string      `json:"controlPlane"`
	SavedAt      time.Time   `json:"savedAt"`
	Types        []cacheType `json:"types"`
	Checksum     string      `json:"sha256"`
}

// cacheType is one xDS type of a cacheFile.
type cacheType struct {
	Type      string   `json:"type"`
	Version   string   `json:"version"`
	Resources [][]byte `json:"resources"`
}

// cacheChecksum hashes the content of f (not its Checksum field) with
// length prefixes, so that no two contents share a byte stream.
func cacheChecksum(f *cacheFile) string {
	h := sha256.New()
	field := func(b []byte) {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	field([]byte(f.Format))
	field([]byte(f.Node))
	field([]byte(f.ControlPlane))
	field([]byte(f.SavedAt.UTC().Format(time.RFC3339Nano)))
	for _, t := range f.Types {
		field([]byte(t.Type))
		field([]byte(t.Version))
		fmt.Fprintf(h, "%d;", len(t.Resources))
		for _, r := range t.Resources {
			field(r)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// encodeCache renders c as the cache file's bytes.
func encodeCache(c cachedConfig) ([]byte, error) {
	f := &cacheFile{Format: cacheFormat, Node: c.node, ControlPlane: c.controlPlane, SavedAt: c.savedAt.UTC()}
	for _, t := range cacheTypes {
		v, ok := c.versions[t]
		if !ok {
			continue
		}
		ct := cacheType{Type: t, Version: v, Resources: [][]byte{}}
		for _, r := range c.resources[t] {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				return nil, fmt.Errorf("encode %s resource: %w", shortType(t), err)
			}
			ct.Resources = append(ct.Resources, b)
		}
		f.Types = append(f.Types, ct)
	}
	f.Checksum = cacheChecksum(f)
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return nil, fmt.Errorf("encode cache: %w", err)
	}
	return append(b, '\n'), nil
}

// decodeCache parses and checks a cache file for node: the format, the
// node, the checksum, the types (listeners and clusters at least), and
// that every resource is a well-formed Any. The resources themselves are
// validated by the caller through the same path as an ADS response.
func decodeCache(b []byte, node string) (cachedConfig, error) {
	var f cacheFile
	if err := json.Unmarshal(b, &f); err != nil {
		return cachedConfig{}, fmt.Errorf("%w: not a cache document: %v", ErrCacheFile, err)
	}
	if f.Format != cacheFormat {
		return cachedConfig{}, fmt.Errorf("%w: format %q, want %q", ErrCacheFile, f.Format, cacheFormat)
	}
	if f.Checksum != cacheChecksum(&f) {
		return cachedConfig{}, fmt.Errorf("%w: checksum mismatch (truncated or altered)", ErrCacheFile)
	}
	if f.Node != node {
		return cachedConfig{}, fmt.Errorf("%w: written for node %q, this sidecar is %q", ErrCacheFile, f.Node, node)
	}
	c := cachedConfig{node: f.Node, controlPlane: f.ControlPlane, savedAt: f.SavedAt,
		versions: map[string]string{}, resources: map[string][]*anypb.Any{}}
	for _, t := range f.Types {
		known := false
		for _, k := range cacheTypes {
			known = known || k == t.Type
		}
		if !known {
			return cachedConfig{}, fmt.Errorf("%w: unknown type %q", ErrCacheFile, t.Type)
		}
		if _, dup := c.versions[t.Type]; dup {
			return cachedConfig{}, fmt.Errorf("%w: type %s twice", ErrCacheFile, shortType(t.Type))
		}
		if t.Version == "" {
			return cachedConfig{}, fmt.Errorf("%w: %s has no version", ErrCacheFile, shortType(t.Type))
		}
		c.versions[t.Type] = t.Version
		for i, r := range t.Resources {
			a := &anypb.Any{}
			if err := proto.Unmarshal(r, a); err != nil {
				return cachedConfig{}, fmt.Errorf("%w: %s resource %d: %v", ErrCacheFile, shortType(t.Type), i, err)
			}
			c.resources[t.Type] = append(c.resources[t.Type], a)
		}
	}
	for _, t := range []string{listenerType, clusterType} {
		if _, ok := c.versions[t]; !ok {
			return cachedConfig{}, fmt.Errorf("%w: no %s", ErrCacheFile, shortType(t))
		}
	}
	return c, nil
}

// responses returns c as the ADS responses it came from, in cacheTypes
// order, so that loading goes through the same validation as the wire.
func (c cachedConfig) responses() []*discoveryv3.DiscoveryResponse {
	var out []*discoveryv3.DiscoveryResponse
	for _, t := range cacheTypes {
		if v, ok := c.versions[t]; ok {
			out = append(out, &discoveryv3.DiscoveryResponse{TypeUrl: t, VersionInfo: v, Resources: c.resources[t]})
		}
	}
	return out
}

// writeFileAtomic replaces path with b: a temporary file in the same
// directory, synced, renamed over path, and the directory synced, so that
// a crash leaves either the old file or the new one, never a mix.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// CacheStatus is what the admin endpoint shows about the xDS cache file.
type CacheStatus struct {
	// Path is the cache file (Config.XDSCache).
	Path string `json:"path"`
	// Loaded is true when the sidecar started from the file.
	Loaded bool `json:"loaded"`
	// LoadError says why the file was refused at start, if it was.
	LoadError string `json:"loadError,omitempty"`
	// LoadedVersions are the versions the file held when it was loaded,
	// and LoadedSavedAt when it had been written, by ControlPlane.
	LoadedVersions map[string]string `json:"loadedVersions,omitempty"`
	LoadedSavedAt  time.Time         `json:"loadedSavedAt,omitzero"`
	ControlPlane   string            `json:"controlPlane,omitempty"`
	// Writes counts successful writes; LastWrite is the last one,
	// WriteError the last failure (cleared by a success).
	Writes     uint64    `json:"writes"`
	LastWrite  time.Time `json:"lastWrite,omitzero"`
	WriteError string    `json:"writeError,omitempty"`
}

// loadCache starts the sidecar from the cache file, if there is one and it
// is good: every resource goes through accept (decode and validate, as a
// response from a control plane would) on a scratch client first, so a bad
// file changes nothing. A missing file is the normal first start; any
// other problem is logged at error and counted, and the sidecar waits for
// a control plane.
func (a *adsClient) loadCache() {
	path := a.p.cfg.XDSCache
	p := a.p
	st := &CacheStatus{Path: path}
	defer func() {
		p.mu.Lock()
		p.xds.Cache = st
		p.mu.Unlock()
	}()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		p.m.cacheLoads.WithLabelValues("absent").Inc()
		p.log.Info("no xDS cache file yet; waiting for a control plane", "path", path)
		return
	}
	if err != nil {
		p.m.cacheLoads.WithLabelValues("refused").Inc()
		st.LoadError = err.Error()
		p.log.Error("xDS cache file unreadable; ignored, waiting for a control plane", "path", path, "err", err)
		return
	}
	c, err := decodeCache(b, p.cfg.NodeID)
	scratch := newADSClient(p)
	if err == nil {
		for _, resp := range c.responses() {
			if err = scratch.accept(resp); err != nil {
				err = fmt.Errorf("%w: %s version %s: %v", ErrCacheFile, shortType(resp.TypeUrl), resp.VersionInfo, err)
				break
			}
		}
	}
	if err != nil {
		p.m.cacheLoads.WithLabelValues("refused").Inc()
		st.LoadError = err.Error()
		p.log.Error("xDS cache file refused; ignored, waiting for a control plane", "path", path, "err", err)
		return
	}
	a.lds, a.cds, a.eds = scratch.lds, scratch.cds, scratch.eds
	a.raw = scratch.raw
	p.mu.Lock()
	for t, v := range c.versions {
		a.versions[t] = v
		p.xds.Versions[shortType(t)] = v
	}
	p.mu.Unlock()
	a.edsNames = a.wantEDS()
	a.saved = c.versions
	p.m.cacheLoads.WithLabelValues("ok").Inc()
	st.Loaded, st.LoadedSavedAt, st.ControlPlane = true, c.savedAt, c.controlPlane
	st.LoadedVersions = map[string]string{}
	for t, v := range c.versions {
		st.LoadedVersions[shortType(t)] = v
	}
	p.log.Info("starting from the cached xDS configuration; a control plane's newer versions will replace it",
		"path", path, "saved_at", c.savedAt, "age", time.Since(c.savedAt).Round(time.Second),
		"from_control_plane", c.controlPlane, "lds", c.versions[listenerType], "cds", c.versions[clusterType],
		"eds", c.versions[endpointType])
	p.apply(a.lds, a.cds, a.eds)
}

// saveCache hands the last accepted configuration to the cache writer when
// its versions differ from what the file holds or is about to hold. The
// write itself (two fsyncs) happens later, off the ADS loop (cacheWriter).
func (a *adsClient) saveCache(controlPlane string) {
	if a.cache == nil {
		return
	}
	if _, ok := a.versions[listenerType]; !ok {
		return
	}
	if _, ok := a.versions[clusterType]; !ok {
		return
	}
	if len(a.edsNames) > 0 && a.versions[endpointType] == "" {
		return // the assignments are still on their way
	}
	if maps.Equal(a.saved, a.versions) {
		return
	}
	// The loop replaces a type's versions and resources on each accepted
	// response (it never changes a slice in place): shallow copies are the
	// configuration as of now.
	a.cache.put(cachedConfig{node: a.p.cfg.NodeID, controlPlane: controlPlane, savedAt: time.Now(),
		versions: maps.Clone(a.versions), resources: maps.Clone(a.raw)})
	a.saved = maps.Clone(a.versions)
}

// cacheWriteDelay is how long the cache writer waits, after a change not
// yet written, before it writes the file: the changes that arrive meanwhile
// go into the same write. A failover or switchover brings several xDS
// updates within a few tens of milliseconds, each of which every sidecar
// wrote at once, with two fsyncs, while the cores' claim (etcd) and the
// new primary's first second copy (UCS) waited on the same disk and CPUs:
// on a 2-core machine, `hachat bench failover --sidecar` paused the chat
// markedly longer with the writes than without them (docs/proxy.md). The
// file is for a start with no control plane answering, so a second's lag
// costs nothing there, and a stopping sidecar writes what is pending.
const cacheWriteDelay = time.Second

// cacheWriter writes the xDS cache file for the ADS loop: put hands it the
// latest configuration, run writes it cacheWriteDelay after the first
// change not yet written (the latest one by then), and once more, at once,
// when its context ends. A failed write is retried with the next change,
// or when none comes, after a delay that doubles with each failure in a
// row up to 64 times the delay (cacheWriteMaxDoublings); the first failure of a
// run is logged as an error, the others at debug, and the write that ends
// the run says how many failed before it.
type cacheWriter struct {
	p     *Proxy
	path  string
	delay time.Duration

	mu      sync.Mutex
	pending *cachedConfig // the latest configuration not yet written
	wake    chan struct{} // one slot: a change is pending

	failures int // failed writes in a row; only run's goroutine uses it
}

// cacheWriteMaxDoublings bounds the retry delay of a cache file that
// cannot be written: at most 2^6 = 64 times cacheWriteDelay between attempts.
const cacheWriteMaxDoublings = 6

func newCacheWriter(p *Proxy, path string, delay time.Duration) *cacheWriter {
	return &cacheWriter{p: p, path: path, delay: delay, wake: make(chan struct{}, 1)}
}

// put makes c the configuration to write next, replacing one not yet written.
func (w *cacheWriter) put(c cachedConfig) {
	w.mu.Lock()
	w.pending = &c
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run writes what put hands it until ctx ends, then writes what is pending.
func (w *cacheWriter) run(ctx context.Context) {
	t := time.NewTimer(0)
	<-t.C
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.flush()
			return
		case <-w.wake:
		}
		t.Reset(w.nextDelay())
		select {
		case <-ctx.Done():
			w.flush()
			return
		case <-t.C:
		}
		w.flush()
	}
}

// nextDelay is how long run waits before the next write: the delay, doubled
// for each failed write in a row, at most cacheWriteMaxDoublings times.
func (w *cacheWriter) nextDelay() time.Duration {
	return w.delay << min(w.failures, cacheWriteMaxDoublings)
}

// flush writes the pending configuration, if any; a failed write is put
// back unless a newer one came meanwhile.
func (w *cacheWriter) flush() {
	w.mu.Lock()
	c := w.pending
	w.pending = nil
	w.mu.Unlock()
	if c == nil {
		return
	}
	if err := w.write(*c, w.failures); err != nil {
		w.failures++
		w.mu.Lock()
		if w.pending == nil {
			w.pending = c
		}
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
		return
	}
	w.failures = 0
}

// write writes c to the cache file and records the outcome in the
// sidecar's status and metrics; failed is the number of failed writes just
// before this one: it decides the log level of a failure and is told when
// a write ends such a run.
func (w *cacheWriter) write(c cachedConfig, failed int) error {
	p := w.p
	b, err := encodeCache(c)
	if err == nil {
		err = writeFileAtomic(w.path, b)
	}
	p.mu.Lock()
	if p.xds.Cache == nil {
		p.xds.Cache = &CacheStatus{Path: w.path}
	}
	st := p.xds.Cache
	if err != nil {
		st.WriteError = err.Error()
	} else {
		st.Writes++
		st.LastWrite, st.WriteError = c.savedAt, ""
	}
	p.mu.Unlock()
	if err != nil {
		p.m.cacheWrites.WithLabelValues("error").Inc()
		if failed == 0 {
			p.log.Error("write xDS cache file; retrying with each change and less often while it fails", "path", w.path, "err", err)
		} else {
			p.log.Debug("write xDS cache file", "path", w.path, "failed_before", failed, "err", err)
		}
		return err
	}
	if failed > 0 {
		p.log.Info("xDS cache file written again", "path", w.path, "failed_before", failed)
	}
	p.m.cacheWrites.WithLabelValues("ok").Inc()
	p.log.Debug("xDS cache file written", "path", w.path, "lds", c.versions[listenerType],
		"cds", c.versions[clusterType], "eds", c.versions[endpointType])
	return nil
}
