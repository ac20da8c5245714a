package httpfx

import (
	"crypto/tls"
	"fmt"
)

// tlsConfig builds the transport's TLS settings from c, reading the files it names, and the
// tlsFiles that keep them current (nil if c names no client certificate and does not reload
// its CA file). Every error names the field.
func (c Config) tlsConfig() (*tls.Config, *tlsFiles, error) {
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
		return nil, nil, fmt.Errorf("httpfx: config: TLSMinVersion is %q: want \"1.2\" or \"1.3\"", c.TLSMinVersion)
	}
	var sessions *sessionCache
	if c.TLSSessionCacheSize > 0 { // one cache for every client of the pool: sessions resume across them
		sessions = newSessionCache(c.TLSSessionCacheSize)
		tc.ClientSessionCache = sessions
	}
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile == "":
		return nil, nil, fmt.Errorf("httpfx: config: TLSCertFile is set but TLSKeyFile is not: want both or neither")
	case c.TLSKeyFile != "" && c.TLSCertFile == "":
		return nil, nil, fmt.Errorf("httpfx: config: TLSKeyFile is set but TLSCertFile is not: want both or neither")
	case c.TLSCAOnly && c.TLSCAFile == "" && c.TLSCAPEM == "":
		return nil, nil, fmt.Errorf("httpfx: config: TLSCAOnly is set but neither TLSCAFile nor TLSCAPEM is: no upstream could be verified")
	case c.TLSCAReload && c.TLSCAFile == "":
		return nil, nil, fmt.Errorf("httpfx: config: TLSCAReload is set but TLSCAFile is not: there is no file to reload")
	case c.TLSCAReload && c.TLSInsecureSkipVerify:
		return nil, nil, fmt.Errorf("httpfx: config: TLSCAReload is set with TLSInsecureSkipVerify, which verifies nothing: keep one")
	}
	f := &tlsFiles{certFile: c.TLSCertFile, keyFile: c.TLSKeyFile, caFile: c.TLSCAFile, caPEM: c.TLSCAPEM,
		caOnly: c.TLSCAOnly, caReload: c.TLSCAReload, every: c.TLSReloadInterval, sessions: sessions}
	if err := f.load(); err != nil {
		return nil, nil, err
	}
	switch {
	case c.TLSCAReload:
		// The roots as read now; the owner installs the reload once decorators had their say.
		tc.RootCAs = f.roots.Load()
		f.given = tc.RootCAs
	case c.TLSCAFile != "" || c.TLSCAPEM != "":
		pool, err := f.loadRoots()
		if err != nil {
			return nil, nil, err
		}
		tc.RootCAs = pool
	}
	if c.TLSCertFile != "" {
		tc.GetClientCertificate = f.clientCertificate
	}
	if c.TLSCertFile == "" && !c.TLSCAReload {
		return tc, nil, nil
	}
	if sessions != nil {
		sessions.files = f
	}
	return tc, f, nil
}
