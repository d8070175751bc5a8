package ucsmock

import (
	"crypto/tls"
	"net/http"
	"strings"

	"github.com/hachat/hachat/mtls"
)

// AccessPolicy says which kinds of workload may call which route of the
// UCS API under mTLS: saves and epoch claims by cores only (their writer
// token still applies), reads by cores and operators, the admin API by
// operators, health and metrics by any part of the cluster.
func AccessPolicy(r *http.Request) mtls.Policy {
	p := r.URL.Path
	switch {
	case p == "/healthz" || p == "/metrics":
		return mtls.AnyKind
	case strings.HasPrefix(p, "/ucs/v1/admin/"):
		return mtls.Allow(mtls.KindOperator)
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		return mtls.Allow(mtls.KindCore, mtls.KindOperator)
	default:
		return mtls.Allow(mtls.KindCore)
	}
}

// UseTLS makes the server speak mTLS with certificates from src (call
// before Run): a client without a certificate of the cluster fails the
// handshake, a certificate of the wrong kind gets 403 (AccessPolicy).
func (s *Server) UseTLS(src *mtls.Source) {
	s.handler = mtls.Middleware(AccessPolicy, s.log, s.handler)
	s.tlsConfig = src.ServerConfig()
}

// serverTLS returns the TLS configuration of the listener (nil: plain HTTP).
func (s *Server) serverTLS() *tls.Config {
	if s.tlsConfig == nil {
		return nil
	}
	c := s.tlsConfig.Clone()
	c.NextProtos = []string{"http/1.1"}
	return c
}
