package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// Policy decides whether a verified identity may go on. It returns nil, or
// an error wrapping ErrNotAllowed.
type Policy func(ID) error

// Allow returns a Policy that admits the given kinds.
func Allow(kinds ...string) Policy {
	return func(id ID) error {
		if slices.Contains(kinds, id.Kind) {
			return nil
		}
		return fmt.Errorf("%w: %s (want kind %v)", ErrNotAllowed, id, kinds)
	}
}

// AnyKind admits every identity of the trust domain.
func AnyKind(ID) error { return nil }

// ServerConfig returns a TLS server configuration that presents s's
// current certificate and requires a client certificate that chains to s's
// current bundle and carries a SPIFFE ID of the trust domain. A client
// without a certificate, or with one from another CA, fails the handshake.
// Which kinds may call what is decided after the handshake (Interceptors,
// Middleware), so that a wrong kind gets PermissionDenied / 403, not a
// broken connection.
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &s.cur.Load().cert, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			m := s.cur.Load()
			_, err := verify(m.pool, m.bundle, raw, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// PublicServerConfig returns a TLS server configuration for browsers: it
// presents s's current certificate (a browser trusts it once the cluster's
// ca.pem is imported, or when the part's certificate comes from a public
// CA) and asks for no client certificate. HTTP/1.1 only.
func (s *Source) PublicServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &s.cur.Load().cert, nil
		},
	}
}

// ClientConfig returns a TLS client configuration that presents s's
// current certificate and accepts a server whose certificate chains to s's
// current bundle and whose SPIFFE ID passes server (nil: any kind). Host
// names are not checked: the identity is.
func (s *Source) ClientConfig(server Policy) *tls.Config {
	if server == nil {
		server = AnyKind
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, SPIFFE-style
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &s.cur.Load().cert, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			m := s.cur.Load()
			id, err := verify(m.pool, m.bundle, raw, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			return server(id)
		},
	}
}

// HTTPClientConfig is ClientConfig for HTTP/1.1 clients (the parts'
// HTTPS APIs speak HTTP/1.1).
func (s *Source) HTTPClientConfig(server Policy) *tls.Config {
	c := s.ClientConfig(server)
	c.NextProtos = []string{"http/1.1"}
	return c
}

// HTTPClient returns an HTTP client with timeout that presents s's
// certificate and accepts a server whose identity passes server (nil: any
// kind of the cluster).
func (s *Source) HTTPClient(server Policy, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = s.HTTPClientConfig(server)
	return &http.Client{Timeout: timeout, Transport: tr}
}

// PeerIdentity returns the SPIFFE ID of the peer of a verified connection.
func PeerIdentity(st tls.ConnectionState) (ID, error) {
	if len(st.PeerCertificates) == 0 {
		return ID{}, fmt.Errorf("%w: no peer certificate", ErrNoIdentity)
	}
	return idOf(st.PeerCertificates[0])
}
