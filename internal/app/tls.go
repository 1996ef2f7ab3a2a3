package app

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// TLSOptions turn on TLS for the check ports (HTTP and gRPC).
type TLSOptions struct {
	// CertFile and KeyFile are the server's certificate and key (PEM);
	// both are reloaded when they change (a renewed cert-manager Secret).
	CertFile, KeyFile string
	// ClientCAFile, when set, requires every caller (the gateways) to
	// present a certificate signed by one of its CAs: mutual TLS. It is
	// read at start.
	ClientCAFile string
}

// enabled reports whether TLS is asked for.
func (o TLSOptions) enabled() bool {
	return o.CertFile != "" || o.KeyFile != "" || o.ClientCAFile != ""
}

// config returns the server TLS configuration and the watcher that keeps
// its certificate current (to run with the Manager).
func (o TLSOptions) config() (*tls.Config, *certwatcher.CertWatcher, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, nil, fmt.Errorf("TLS for the check ports needs both --tls-cert-file and --tls-key-file")
	}
	w, err := certwatcher.New(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("TLS certificate: %w", err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: w.GetCertificate}
	if o.ClientCAFile != "" {
		pem, err := os.ReadFile(o.ClientCAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--tls-client-ca-file: %w", err)
		}
		c.ClientCAs = x509.NewCertPool()
		if !c.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--tls-client-ca-file %s holds no PEM certificate", o.ClientCAFile)
		}
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, w, nil
}
