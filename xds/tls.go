package xds

import (
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hachat/hachat/mtls"
)

// Names of the TLS pieces the published resources refer to. A client
// defines them in its bootstrap (GRPCBootstrap, EnvoyBootstrap).
const (
	// TransportSocketTLS is the transport socket of a TLS cluster or filter
	// chain.
	TransportSocketTLS = "envoy.transport_sockets.tls"
	// CertProviderInstance is the certificate provider instance that the
	// chat cluster names for both the client's identity and its roots:
	// grpc-go resolves it in the bootstrap's certificate_providers (the
	// file_watcher plugin), the hachat sidecar ignores it and uses its own
	// --tls-* files.
	CertProviderInstance = "hachat"
	// SDSCertSecret and SDSCASecret are the secrets that the Envoy flavour
	// of the resources names: Envoy does not implement certificate provider
	// instances, so its bootstrap defines these two static secrets from the
	// same files.
	SDSCertSecret = "hachat-cert"
	SDSCASecret   = "hachat-ca"
)

// tlsFlavour says which way a TLS context names its certificates.
type tlsFlavour int

const (
	// providerFlavour names certificate provider instances (grpc-go,
	// the hachat sidecar).
	providerFlavour tlsFlavour = iota
	// sdsFlavour names static SDS secrets (Envoy).
	sdsFlavour
)

// spiffePrefix is the URI SAN prefix of every workload of kind in td.
func spiffePrefix(td, kind string) string {
	return "spiffe://" + td + "/" + kind + "/"
}

// uriPrefixMatchers match a URI SAN spiffe://td/<kind>/ for any of kinds.
// Envoy reads the typed matchers; grpc-go (v1.85) reads only the untyped,
// deprecated match_subject_alt_names, which it applies to every SAN; Envoy
// ignores the untyped list when the typed one is set.
func uriPrefixMatchers(td string, kinds ...string) ([]*tlsv3.SubjectAltNameMatcher, []*matcher.StringMatcher) {
	var typed []*tlsv3.SubjectAltNameMatcher
	var untyped []*matcher.StringMatcher
	for _, k := range kinds {
		m := &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: spiffePrefix(td, k)}}
		typed = append(typed, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m})
		untyped = append(untyped, m)
	}
	return typed, untyped
}

// commonTLS is the CommonTlsContext of the chat service's TLS: the
// workload's own certificate, the cluster CA as roots, the peer's SPIFFE
// ID one of peerKinds, ALPN h2 (gRPC).
func commonTLS(f tlsFlavour, td string, peerKinds ...string) *tlsv3.CommonTlsContext {
	typed, untyped := uriPrefixMatchers(td, peerKinds...)
	vc := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: typed}
	c := &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2"}}
	switch f {
	case providerFlavour:
		vc.MatchSubjectAltNames = untyped //nolint:staticcheck // grpc-go reads only this field
		vc.CaCertificateProviderInstance = &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance}
		c.TlsCertificateProviderInstance = &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance}
		c.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	case sdsFlavour:
		c.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: SDSCertSecret}}
		c.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         vc,
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SDSCASecret},
			},
		}
	}
	return c
}

// upstreamTLS is the transport socket of the chat cluster: mTLS to a core
// (URI SAN prefix spiffe://td/core/).
func upstreamTLS(f tlsFlavour, td string) (*core.TransportSocket, error) {
	a, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: commonTLS(f, td, mtls.KindCore)})
	if err != nil {
		return nil, fmt.Errorf("pack upstream tls context: %w", err)
	}
	return &core.TransportSocket{Name: TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

// SidecarClientKinds are the kinds that may connect to a sidecar listener
// (the hachat sidecar's and, in the Envoy flavour, Envoy's): the clients of
// the chat service on the sidecar's host, and cores and operators.
func SidecarClientKinds() []string {
	return []string{mtls.KindWebAPI, mtls.KindInteraction, mtls.KindOperator, mtls.KindCore}
}

// downstreamTLS is the transport socket of the Envoy sidecar listener: mTLS
// with a client certificate of one of SidecarClientKinds required.
func downstreamTLS(td string) (*core.TransportSocket, error) {
	a, err := anypb.New(&tlsv3.DownstreamTlsContext{
		CommonTlsContext:         commonTLS(sdsFlavour, td, SidecarClientKinds()...),
		RequireClientCertificate: wrapperspb.Bool(true),
	})
	if err != nil {
		return nil, fmt.Errorf("pack downstream tls context: %w", err)
	}
	return &core.TransportSocket{Name: TransportSocketTLS, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}
