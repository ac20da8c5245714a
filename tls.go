package httpfx

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// tlsConfig builds the transport's TLS settings from c, reading the files it names. Every
// error names the field.
func (c Config) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{
		ServerName:         c.TLSServerName,
		InsecureSkipVerify: c.TLSInsecureSkipVerify, //nolint:gosec // documented, and warned about at every start
	}
	switch c.TLSMinVersion {
	case "", "1.2":
		tc.MinVersion = tls.VersionTLS12
	case "1.3":
		tc.MinVersion = tls.VersionTLS13
	default:
		return nil, fmt.Errorf("httpfx: config: TLSMinVersion is %q: want \"1.2\" or \"1.3\"", c.TLSMinVersion)
	}
	if c.TLSCAFile != "" || c.TLSCAPEM != "" {
		pool := x509.NewCertPool()
		if !c.TLSCAOnly {
			sys, err := x509.SystemCertPool()
			if err != nil {
				return nil, fmt.Errorf("httpfx: config: TLSCAFile: the system's roots cannot be read (set TLSCAOnly to use only yours): %w", err)
			}
			pool = sys
		}
		if c.TLSCAFile != "" {
			pem, err := os.ReadFile(c.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("httpfx: config: TLSCAFile: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("httpfx: config: TLSCAFile %q holds no PEM certificate", c.TLSCAFile)
			}
		}
		if c.TLSCAPEM != "" && !pool.AppendCertsFromPEM([]byte(c.TLSCAPEM)) {
			return nil, fmt.Errorf("httpfx: config: TLSCAPEM holds no PEM certificate")
		}
		tc.RootCAs = pool
	} else if c.TLSCAOnly {
		return nil, fmt.Errorf("httpfx: config: TLSCAOnly is set but neither TLSCAFile nor TLSCAPEM is: no upstream could be verified")
	}
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile != "":
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("httpfx: config: TLSCertFile/TLSKeyFile %q/%q: %w", c.TLSCertFile, c.TLSKeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case c.TLSCertFile != "":
		return nil, fmt.Errorf("httpfx: config: TLSCertFile is set but TLSKeyFile is not: want both or neither")
	case c.TLSKeyFile != "":
		return nil, fmt.Errorf("httpfx: config: TLSKeyFile is set but TLSCertFile is not: want both or neither")
	}
	return tc, nil
}
