package main

import (
	"context"
	"crypto/tls"
	"flag"
	"log/slog"
	"net/http"
	"time"

	"github.com/hachat/hachat/mtls"
)

// registerTLSFlags binds --tls-ca, --tls-cert and --tls-key (YAML keys
// tls-ca, tls-cert, tls-key) to f. All three set turn mTLS on.
func registerTLSFlags(fs *flag.FlagSet, f *mtls.Files) {
	fs.StringVar(&f.CA, "tls-ca", f.CA, "mTLS: the cluster CA bundle (ca.pem of `hachat certs init`); with --tls-cert and --tls-key turns mTLS on")
	fs.StringVar(&f.Cert, "tls-cert", f.Cert, "mTLS: this part's certificate (its SPIFFE ID says its kind and name)")
	fs.StringVar(&f.Key, "tls-key", f.Key, "mTLS: this part's private key")
}

// startTLS loads the part's certificate files and reloads them when they
// change, until ctx ends. It returns nil when mTLS is off.
func startTLS(ctx context.Context, f mtls.Files, log *slog.Logger) (*mtls.Source, error) {
	if !f.Enabled() {
		return nil, nil
	}
	src, err := mtls.Load(f)
	if err != nil {
		return nil, err
	}
	go src.Watch(ctx, mtls.DefaultReloadInterval, log) // ends with ctx
	log.Info("mtls on", "id", src.ID().String(), "not_after", src.NotAfter())
	return src, nil
}

// httpClient returns an HTTP client with timeout that speaks mTLS to a
// server of one of kinds when src is set (plain HTTP otherwise).
func httpClient(src *mtls.Source, timeout time.Duration, kinds ...string) *http.Client {
	if src == nil {
		return &http.Client{Timeout: timeout}
	}
	return src.HTTPClient(mtls.Allow(kinds...), timeout)
}

// serverTLS returns the TLS config of an HTTP server of the part (nil
// when mTLS is off).
func serverTLS(src *mtls.Source) *tls.Config {
	if src == nil {
		return nil
	}
	return src.ServerConfig()
}
