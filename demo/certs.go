package demo

import (
	"crypto/tls"

	"github.com/hachat/hachat/mtls"
)

// OperatorName is the certificate name of the operator identity the demo
// issues for `hachat ctl`, the supervisor's readiness checks and the tests.
const OperatorName = "operator"

// CertKind maps a part's kind to its workload kind (mtls.Kind*; "" for none).
func CertKind(k Kind) string {
	switch k {
	case KindCore:
		return mtls.KindCore
	case KindUCS:
		return mtls.KindUCS
	case KindWebAPI:
		return mtls.KindWebAPI
	case KindInteraction:
		return mtls.KindInteraction
	case KindXDS:
		return mtls.KindXDS
	case KindProxy:
		return mtls.KindProxy
	case KindWitness:
		return mtls.KindWitness
	case KindCoord:
		return mtls.KindCoord
	}
	return ""
}

// EnsureCerts makes sure dir holds a CA and a certificate for every part
// of plan and for the operator: it creates the CA when dir has none and
// issues the certificates that are missing (existing ones are kept, so a
// restarted demo keeps its identities).
func EnsureCerts(dir string, plan Plan) error {
	parts := []mtls.Part{{Kind: mtls.KindOperator, Name: OperatorName}}
	for _, p := range plan.Parts {
		if k := CertKind(p.Kind); k != "" {
			parts = append(parts, mtls.Part{Kind: k, Name: p.Name})
		}
	}
	_, err := mtls.Ensure(dir, mtls.DefaultTrustDomain, parts)
	return err
}

// OperatorTLS returns the operator's TLS client configuration from dir,
// accepting a server of any kind of the cluster.
func OperatorTLS(dir string) (*tls.Config, error) {
	src, err := mtls.Load(mtls.FilesIn(dir, OperatorName))
	if err != nil {
		return nil, err
	}
	return src.HTTPClientConfig(nil), nil
}
