package proxy

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/hachat/hachat/mtls"
)

// handshakeTimeout bounds a client's TLS handshake on the data listener: a
// client that connects and says nothing holds a goroutine no longer.
const handshakeTimeout = 5 * time.Second

// ClientKinds are the kinds of workload that may connect to the sidecar's
// data listener under mTLS: the chat service's clients on the sidecar's
// host (webapi, interaction), cores and operators. Others fail the
// handshake (there is no protocol on a TCP proxy to answer 403 in).
func ClientKinds() []string {
	return []string{mtls.KindWebAPI, mtls.KindInteraction, mtls.KindOperator, mtls.KindCore}
}

// sidecarTLS holds the sidecar's TLS configurations, all backed by one
// reloading mtls.Source: new handshakes use the newest files.
type sidecarTLS struct {
	src *mtls.Source
	// listen terminates client connections: a client certificate of one
	// of ClientKinds required, ALPN h2 (the chat service is gRPC).
	listen *tls.Config
	// upstream originates connections to the cores: the sidecar's own
	// certificate, a core's identity required, ALPN h2.
	upstream *tls.Config
	// admin serves the admin API: any client certificate of the trust
	// domain (AdminPolicy decides per route), ALPN h2 and http/1.1.
	admin *tls.Config
}

// newSidecarTLS loads files, or returns nil when mTLS is off.
func newSidecarTLS(files mtls.Files) (*sidecarTLS, error) {
	if !files.Enabled() {
		return nil, nil
	}
	src, err := mtls.Load(files)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	t := &sidecarTLS{src: src}
	kinds := ClientKinds()
	t.listen = src.ServerConfig()
	t.listen.NextProtos = []string{"h2"}
	t.listen.VerifyConnection = func(cs tls.ConnectionState) error {
		id, err := mtls.PeerIdentity(cs)
		if err != nil {
			return err
		}
		if !slices.Contains(kinds, id.Kind) {
			return fmt.Errorf("%w: %s may not use the sidecar (want kind %v)", mtls.ErrNotAllowed, id, kinds)
		}
		return nil
	}
	t.upstream = src.ClientConfig(mtls.Allow(mtls.KindCore))
	t.upstream.NextProtos = []string{"h2"}
	t.admin = src.ServerConfig()
	t.admin.NextProtos = []string{"h2", "http/1.1"}
	return t, nil
}

// coreCreds are the gRPC credentials of the health checks: mTLS to a core.
func (t *sidecarTLS) coreCreds() credentials.TransportCredentials {
	return credentials.NewTLS(t.src.ClientConfig(mtls.Allow(mtls.KindCore)))
}

// xdsCreds are the gRPC credentials of the ADS client: mTLS to a control
// plane.
func (t *sidecarTLS) xdsCreds() credentials.TransportCredentials {
	return credentials.NewTLS(t.src.ClientConfig(mtls.Allow(mtls.KindXDS)))
}

// AdminPolicy says who may read the sidecar's admin API under mTLS: the
// clusters dump (addresses, roles, errors) is for operators; /healthz and
// /metrics are readable by any verified identity of the trust domain
// (probes and scrapers come in many kinds; neither reveals chat data).
func AdminPolicy(r *http.Request) mtls.Policy {
	switch r.URL.Path {
	case "/healthz", "/metrics":
		return mtls.AnyKind
	}
	return mtls.Allow(mtls.KindOperator)
}
