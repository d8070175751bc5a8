package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Files names the three files a part loads: the trust bundle (the CA
// certificate), its certificate and its key.
type Files struct {
	CA   string `yaml:"tls-ca"`
	Cert string `yaml:"tls-cert"`
	Key  string `yaml:"tls-key"`
}

// FilesIn returns the files of the part called name in the cert dir dir.
func FilesIn(dir, name string) Files {
	return Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+".key")}
}

// Enabled reports whether any file is set (mTLS is on).
func (f Files) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate reports a partial configuration: all three files or none.
func (f Files) Validate() error {
	if f.Enabled() && (f.CA == "" || f.Cert == "" || f.Key == "") {
		return errors.New("mtls: --tls-ca, --tls-cert and --tls-key go together")
	}
	return nil
}

// DefaultReloadInterval is how often a Source looks at its files.
const DefaultReloadInterval = time.Second

// Source holds a part's current certificate and trust bundle, read from
// Files and reloaded when the files change (Watch). It is safe for
// concurrent use; TLS configurations built from it always use the newest
// good files, so certificates rotate without a restart and without
// dropping connections (established ones keep their session).
type Source struct {
	files Files
	cur   atomic.Pointer[material]

	mu   sync.Mutex
	seen []fileStamp
}

// material is one consistent load of the files.
type material struct {
	cert   tls.Certificate
	leaf   *x509.Certificate
	id     ID
	pool   *x509.CertPool
	bundle []*x509.Certificate
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Load reads files into a new Source. The certificate must carry a SPIFFE
// ID and chain to the bundle.
func Load(files Files) (*Source, error) {
	if err := files.Validate(); err != nil {
		return nil, err
	}
	if !files.Enabled() {
		return nil, errors.New("mtls: no files to load")
	}
	s := &Source{files: files}
	m, stamps, err := s.read()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.seen = stamps
	return s, nil
}

// ID returns the identity of the current certificate.
func (s *Source) ID() ID { return s.cur.Load().id }

// NotAfter returns when the current certificate expires.
func (s *Source) NotAfter() time.Time { return s.cur.Load().leaf.NotAfter }

func (s *Source) stamps() ([]fileStamp, error) {
	var out []fileStamp
	for _, p := range []string{s.files.CA, s.files.Cert, s.files.Key} {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("mtls: %w", err)
		}
		out = append(out, fileStamp{mod: fi.ModTime(), size: fi.Size()})
	}
	return out, nil
}

func (s *Source) read() (*material, []fileStamp, error) {
	stamps, err := s.stamps()
	if err != nil {
		return nil, nil, err
	}
	caPEM, err := os.ReadFile(s.files.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: read bundle: %w", err)
	}
	bundle, err := parseCerts(caPEM)
	if err != nil || len(bundle) == 0 {
		return nil, nil, fmt.Errorf("mtls: %s holds no CA certificate (%v)", s.files.CA, err)
	}
	cert, err := tls.LoadX509KeyPair(s.files.Cert, s.files.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: load key pair: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: parse certificate: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range bundle {
		pool.AddCert(c)
	}
	id, err := verify(pool, bundle, cert.Certificate, x509.ExtKeyUsageAny)
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: own certificate %s: %w", s.files.Cert, err)
	}
	cert.Leaf = leaf
	return &material{cert: cert, leaf: leaf, id: id, pool: pool, bundle: bundle}, stamps, nil
}

// Reload reads the files again if they changed since the last load. It
// reports whether a new certificate or bundle is now in use; on a bad read
// (a half-written rotation, say) it keeps the last good files and returns
// the error.
func (s *Source) Reload() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamps, err := s.stamps()
	if err != nil {
		return false, err
	}
	if slices.Equal(stamps, s.seen) {
		return false, nil
	}
	m, stamps, err := s.read()
	if err != nil {
		return false, err
	}
	s.cur.Store(m)
	s.seen = stamps
	return true, nil
}

// Watch reloads the files every interval (DefaultReloadInterval when 0)
// until ctx ends, logging each rotation and each bad read.
func (s *Source) Watch(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if interval <= 0 {
		interval = DefaultReloadInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := s.Reload()
		switch {
		case err != nil && err.Error() != lastErr:
			lastErr = err.Error()
			log.Warn("mtls: could not reload certificate files: keeping the last good ones", "err", err)
		case changed:
			lastErr = ""
			log.Info("mtls: certificate files reloaded", "id", s.ID().String(), "not_after", s.NotAfter())
		}
	}
}

// verify checks a peer chain against the bundle and returns its SPIFFE ID,
// which must be in the bundle's trust domain.
func verify(pool *x509.CertPool, bundle []*x509.Certificate, raw [][]byte, usage x509.ExtKeyUsage) (ID, error) {
	if len(raw) == 0 {
		return ID{}, fmt.Errorf("%w: no certificate presented", ErrNoIdentity)
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return ID{}, fmt.Errorf("%w: %v", ErrUntrusted, err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return ID{}, fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	id, err := idOf(certs[0])
	if err != nil {
		return ID{}, err
	}
	td := ""
	for _, b := range bundle {
		for _, u := range b.URIs {
			if u.Scheme == "spiffe" {
				td = u.Host
			}
		}
	}
	if td != "" && id.TrustDomain != td {
		return ID{}, fmt.Errorf("%w: %s is outside trust domain %s", ErrUntrusted, id, td)
	}
	return id, nil
}

// idOf returns the SPIFFE ID of a certificate (exactly one spiffe URI SAN).
func idOf(c *x509.Certificate) (ID, error) {
	var found []string
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			found = append(found, u.String())
		}
	}
	if len(found) != 1 {
		return ID{}, fmt.Errorf("%w: certificate carries %d SPIFFE IDs, want 1", ErrNoIdentity, len(found))
	}
	return ParseID(found[0])
}
