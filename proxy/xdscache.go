package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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

// saveCache writes the last accepted configuration to the cache file when
// its versions differ from what the file holds. A failed write is logged
// and counted; the sidecar goes on.
func (a *adsClient) saveCache(controlPlane string) {
	path := a.p.cfg.XDSCache
	if path == "" {
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
	same := len(a.saved) == len(a.versions)
	for t, v := range a.versions {
		same = same && a.saved[t] == v
	}
	if same {
		return
	}
	c := cachedConfig{node: a.p.cfg.NodeID, controlPlane: controlPlane, savedAt: time.Now(),
		versions: a.versions, resources: a.raw}
	b, err := encodeCache(c)
	if err == nil {
		err = writeFileAtomic(path, b)
	}
	a.p.mu.Lock()
	if a.p.xds.Cache == nil {
		a.p.xds.Cache = &CacheStatus{Path: path}
	}
	st := a.p.xds.Cache
	if err != nil {
		st.WriteError = err.Error()
	} else {
		st.Writes++
		st.LastWrite, st.WriteError = c.savedAt, ""
	}
	a.p.mu.Unlock()
	if err != nil {
		a.p.m.cacheWrites.WithLabelValues("error").Inc()
		a.p.log.Error("write xDS cache file", "path", path, "err", err)
		return
	}
	a.p.m.cacheWrites.WithLabelValues("ok").Inc()
	a.saved = make(map[string]string, len(a.versions))
	for t, v := range a.versions {
		a.saved[t] = v
	}
	a.p.log.Debug("xDS cache file written", "path", path, "lds", a.versions[listenerType],
		"cds", a.versions[clusterType], "eds", a.versions[endpointType])
}
