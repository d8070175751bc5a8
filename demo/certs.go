package demo

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hachat/hachat/mtls"
)

// OperatorName is the certificate name of the operator identity the demo
// issues for `hachat ctl`, the supervisor's readiness checks and the tests.
const OperatorName = "operator"

// certKind maps a part's kind to its workload kind.
func certKind(k Kind) string {
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
	}
	return ""
}

// EnsureCerts makes sure dir holds a CA and a certificate for every part
// of plan and for the operator: it creates the CA when dir has none and
// issues the certificates that are missing (existing ones are kept, so a
// restarted demo keeps its identities).
func EnsureCerts(dir string, plan Plan) error {
	ca, err := mtls.LoadCA(dir)
	if err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "ca.pem")); !errors.Is(serr, fs.ErrNotExist) {
			return fmt.Errorf("cert dir %s: %w", dir, err)
		}
		if ca, err = mtls.Init(dir, mtls.DefaultTrustDomain, nil, false); err != nil {
			return err
		}
	}
	parts := []mtls.Part{{Kind: mtls.KindOperator, Name: OperatorName}}
	for _, p := range plan.Parts {
		if k := certKind(p.Kind); k != "" {
			parts = append(parts, mtls.Part{Kind: k, Name: p.Name})
		}
	}
	for _, p := range parts {
		if _, err := os.Stat(filepath.Join(dir, p.Name+".pem")); err == nil {
			continue
		}
		if err := ca.WritePart(dir, p, mtls.DefaultCertValidity); err != nil {
			return err
		}
	}
	return nil
}

// OperatorTLS returns the operator's TLS client configuration from dir,
// accepting a server of any kind of the cluster.
func OperatorTLS(dir string) (*tls.Config, error) {
	src, err := mtls.Load(mtls.FilesIn(dir, OperatorName))
	if err != nil {
		return nil, err
	}
	c := src.ClientConfig(nil)
	c.NextProtos = []string{"http/1.1"}
	return c, nil
}
