// Package mtls gives every hachat part a workload identity and mutual TLS:
// a cluster CA, one certificate per part whose URI SAN is a SPIFFE ID
// (spiffe://<trust-domain>/<kind>/<name>), TLS configurations that reload
// their files when they change, and authorization by identity (which kinds
// of part may call which API).
//
// The files of a cluster live in one directory (the cert dir):
//
//	ca.pem          the CA certificate (the trust bundle every part loads)
//	ca.key          the CA key (only `hachat certs` reads it)
//	<name>.pem      a part's certificate
//	<name>.key      a part's key
//
// Verification is SPIFFE-style: a peer certificate must chain to the
// bundle and carry exactly one spiffe:// URI SAN in the trust domain;
// host names are not checked (parts move between addresses), the identity
// is. Authorization then looks at the kind in the ID's path.
package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain `hachat certs init` uses when none
// is given.
const DefaultTrustDomain = "hachat.local"

// Kinds of workload. The kind is the first segment of a SPIFFE ID's path.
const (
	KindCore        = "core"
	KindUCS         = "ucs"
	KindXDS         = "xds"
	KindProxy       = "proxy"
	KindWebAPI      = "webapi"
	KindInteraction = "interaction"
	KindWitness     = "witness"
	KindOperator    = "operator"
	KindEnvoy       = "envoy"
	// KindCoord is a member of the coordination cluster (etcd).
	KindCoord = "coord"
)

// Kinds lists every kind a certificate may carry.
func Kinds() []string {
	return []string{KindCore, KindUCS, KindXDS, KindProxy, KindWebAPI, KindInteraction, KindWitness, KindOperator, KindEnvoy, KindCoord}
}

// Errors callers branch on.
var (
	// ErrNoIdentity means a peer presented no certificate with a SPIFFE ID.
	ErrNoIdentity = errors.New("no workload identity")
	// ErrUntrusted means a peer certificate does not chain to the bundle or
	// is outside the trust domain.
	ErrUntrusted = errors.New("untrusted certificate")
	// ErrNotAllowed means a verified identity is not allowed to make a call.
	ErrNotAllowed = errors.New("identity not allowed")
)

// ID is a workload identity: spiffe://<TrustDomain>/<Kind>/<Name>.
type ID struct {
	TrustDomain string
	Kind        string
	Name        string
}

// String returns the SPIFFE ID ("" for the zero ID).
func (id ID) String() string {
	if id == (ID{}) {
		return ""
	}
	return "spiffe://" + id.TrustDomain + "/" + id.Kind + "/" + id.Name
}

// ParseID parses a SPIFFE ID of the form spiffe://td/kind/name.
func ParseID(s string) (ID, error) {
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return ID{}, fmt.Errorf("parse spiffe id %q: %w", s, err)
	}
	segs := splitPath(sid.Path())
	if len(segs) != 2 || segs[0] == "" || segs[1] == "" {
		return ID{}, fmt.Errorf("spiffe id %q: want spiffe://<trust-domain>/<kind>/<name>", s)
	}
	return ID{TrustDomain: sid.TrustDomain().Name(), Kind: segs[0], Name: segs[1]}, nil
}

func splitPath(p string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

// validate checks that id can be put in a certificate.
func (id ID) validate() error {
	if _, err := spiffeid.TrustDomainFromString(id.TrustDomain); err != nil {
		return fmt.Errorf("trust domain %q: %w", id.TrustDomain, err)
	}
	if _, err := ParseID(id.String()); err != nil {
		return err
	}
	return nil
}

// CA is a cluster's certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed CA for trustDomain, valid for validity.
func NewCA(trustDomain string, validity time.Duration) (*CA, error) {
	if _, err := spiffeid.TrustDomainFromString(trustDomain); err != nil {
		return nil, fmt.Errorf("new ca: trust domain %q: %w", trustDomain, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new ca: key: %w", err)
	}
	td, _ := url.Parse("spiffe://" + trustDomain)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"hachat"}, CommonName: "hachat CA " + trustDomain},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("new ca: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new ca: parse: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("mtls: crypto/rand failed: %v", err)) // the system's randomness is gone
	}
	return n
}

// Issued is a certificate and key in PEM.
type Issued struct {
	CertPEM []byte
	KeyPEM  []byte
}

// Issue signs a certificate for id, valid for validity, usable as client
// and server. hosts (DNS names or IPs) are added as SANs for clients that
// check host names (browsers, Envoy without SAN matchers); hachat's own
// clients check the SPIFFE ID.
func (ca *CA) Issue(id ID, hosts []string, validity time.Duration) (Issued, error) {
	if err := id.validate(); err != nil {
		return Issued{}, fmt.Errorf("issue: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, fmt.Errorf("issue %s: key: %w", id, err)
	}
	u, _ := url.Parse(id.String())
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"hachat"}, CommonName: id.Name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Issued{}, fmt.Errorf("issue %s: sign: %w", id, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Issued{}, fmt.Errorf("issue %s: encode key: %w", id, err)
	}
	return Issued{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

// PEM returns the CA certificate and key in PEM.
func (ca *CA) PEM() (Issued, error) {
	kder, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return Issued{}, fmt.Errorf("encode ca key: %w", err)
	}
	return Issued{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

// LoadCA reads the CA of dir (ca.pem, ca.key).
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	certs, err := parseCerts(certPEM)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("load ca: ca.pem holds no certificate: %v", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("load ca: ca.key holds no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load ca: ca.key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("load ca: ca.key is not a signing key")
	}
	return &CA{Cert: certs[0], Key: signer}, nil
}

// TrustDomain returns the CA's trust domain (from its URI SAN).
func (ca *CA) TrustDomain() string {
	for _, u := range ca.Cert.URIs {
		if u.Scheme == "spiffe" {
			return u.Host
		}
	}
	return DefaultTrustDomain
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
}

// writeFileAtomic writes b to path through a temporary file and a rename,
// so that a watcher never reads half a file.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
