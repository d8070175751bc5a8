package mtls

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Default validities of `hachat certs`.
const (
	// DefaultCAValidity is how long a new CA is valid.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultCertValidity is how long a part's certificate is valid.
	DefaultCertValidity = 365 * 24 * time.Hour
)

// Part is one workload to issue a certificate for.
type Part struct {
	// Kind is the workload kind (KindCore, ...).
	Kind string
	// Name is the part's name, unique in the cluster; its files are
	// <name>.pem and <name>.key.
	Name string
	// Hosts are extra DNS or IP SANs (localhost and 127.0.0.1 are always added).
	Hosts []string
}

// ErrExists means Init found a CA in the directory already.
var ErrExists = errors.New("cert dir already holds a CA")

// Init creates dir with a new CA for trustDomain and a certificate for
// each part. It refuses a dir that already holds a CA (ErrExists) unless
// force is set: existing certificates are then replaced.
func Init(dir, trustDomain string, parts []Part, force bool) (*CA, error) {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err == nil && !force {
		return nil, fmt.Errorf("init %s: %w (use --force to replace it)", dir, ErrExists)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	ca, err := NewCA(trustDomain, DefaultCAValidity)
	if err != nil {
		return nil, err
	}
	p, err := ca.PEM()
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, "ca.key"), p.KeyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, "ca.pem"), p.CertPEM, 0o644); err != nil {
		return nil, err
	}
	for _, part := range parts {
		if err := ca.WritePart(dir, part, DefaultCertValidity); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

// WritePart issues a certificate for part and writes <name>.key then
// <name>.pem into dir, each atomically (a watcher that reads between the
// two sees a mismatched pair, refuses it and keeps its last good one until
// the next look).
func (ca *CA) WritePart(dir string, part Part, validity time.Duration) error {
	if part.Name == "" || filepath.Base(part.Name) != part.Name || part.Name == "ca" {
		return fmt.Errorf("write part: bad name %q", part.Name)
	}
	id := ID{TrustDomain: ca.TrustDomain(), Kind: part.Kind, Name: part.Name}
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, part.Hosts...)
	is, err := ca.Issue(id, hosts, validity)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, part.Name+".key"), is.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, part.Name+".pem"), is.CertPEM, 0o644)
}

// Ensure makes sure dir holds a CA (created for trustDomain when missing)
// and a certificate for every part; certificates already there are kept,
// so that a cluster started again keeps its identities.
func Ensure(dir, trustDomain string, parts []Part) (*CA, error) {
	ca, err := LoadCA(dir)
	if err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "ca.pem")); !errors.Is(serr, fs.ErrNotExist) {
			return nil, fmt.Errorf("cert dir %s: %w", dir, err)
		}
		if ca, err = Init(dir, trustDomain, nil, false); err != nil {
			return nil, err
		}
	}
	for _, p := range parts {
		if _, err := os.Stat(filepath.Join(dir, p.Name+".pem")); err == nil {
			continue
		}
		if err := ca.WritePart(dir, p, DefaultCertValidity); err != nil {
			return nil, err
		}
	}
	return ca, nil
}
