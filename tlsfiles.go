package httpfx

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// tlsFiles keeps what the TLS files of the configuration hold current for new handshakes: the
// client certificate (TLSCertFile and TLSKeyFile) and, with TLSCAReload, the roots
// (TLSCAFile). Certificates issued for hours by cert-manager or SPIFFE are renewed on disk
// while the process runs: a handshake that needs them re-reads a file whose size or
// modification time changed since it was read, at most every TLSReloadInterval, with no
// goroutine of its own. A version that fails to load (a pair written half, a file being
// replaced) keeps the last good one, and is logged once; connections made with an older
// certificate are not cut: HTTP/1 ones age out by MaxConnLifetime, HTTP/2 ones (which it does
// not retire) when the server or an idle spell closes them. It is safe for concurrent use.
type tlsFiles struct {
	certFile, keyFile string
	caFile, caPEM     string
	caOnly            bool
	caReload          bool          // TLSCAReload: new roots apply to new handshakes
	every             time.Duration // zero: the files are read once
	log               atomic.Pointer[zap.Logger]

	sessions  *sessionCache                   // emptied when the client certificate changes; nil if none
	pair      atomic.Pointer[tls.Certificate] // nil if no client certificate is configured
	notAfter  atomic.Int64                    // the pair's expiry, Unix nanoseconds
	roots     atomic.Pointer[x509.CertPool]   // nil unless caReload
	given     *x509.CertPool                  // the roots the transport's TLS config was built with, if caReload
	checkedAt atomic.Int64                    // Unix nanoseconds

	mu                  sync.Mutex
	pairSig, pairFailed fileSig // of the pair in use, and of the last that failed to load
	caSig, caFailed     fileSig
}

// fileSig is what tells a file's versions apart: its size and modification time, of each
// file of a set.
type fileSig [2]struct {
	size, mod int64 // bytes; Unix nanoseconds
}

// load reads the files at start: their errors make Validate fail, naming the field.
func (f *tlsFiles) load() error {
	if f.certFile != "" {
		sig, _ := sigOf(f.certFile, f.keyFile)
		pair, err := loadPair(f.certFile, f.keyFile)
		if err != nil {
			return fmt.Errorf("httpfx: config: TLSCertFile/TLSKeyFile %q/%q: %w", f.certFile, f.keyFile, err)
		}
		f.setPair(pair, sig)
	}
	if f.caReload {
		sig, _ := sigOf(f.caFile)
		pool, err := f.loadRoots()
		if err != nil {
			return err
		}
		f.roots.Store(pool)
		f.caSig = sig
	}
	f.checkedAt.Store(time.Now().UnixNano())
	return nil
}

// loadRoots reads the roots: the system's (unless caOnly), TLSCAFile's and TLSCAPEM's. Every
// error names the field.
func (f *tlsFiles) loadRoots() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !f.caOnly {
		sys, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("httpfx: config: TLSCAFile: the system's roots cannot be read (set TLSCAOnly to use only yours): %w", err)
		}
		pool = sys
	}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("httpfx: config: TLSCAFile: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("httpfx: config: TLSCAFile %q holds no PEM certificate", f.caFile)
		}
	}
	if f.caPEM != "" && !pool.AppendCertsFromPEM([]byte(f.caPEM)) {
		return nil, errors.New("httpfx: config: TLSCAPEM holds no PEM certificate")
	}
	return pool, nil
}

func (f *tlsFiles) setPair(pair *tls.Certificate, sig fileSig) {
	f.pair.Store(pair)
	f.notAfter.Store(pair.Leaf.NotAfter.UnixNano())
	f.pairSig = sig
}

// certNotAfter returns when the client certificate presented now expires; zero if none.
func (f *tlsFiles) certNotAfter() time.Time {
	if f == nil || f.pair.Load() == nil {
		return time.Time{}
	}
	return time.Unix(0, f.notAfter.Load())
}

// clientCertificate is the TLS config's GetClientCertificate: the newest good pair.
func (f *tlsFiles) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	f.check()
	return f.pair.Load(), nil
}

// installCAReload returns tc, cloned, verifying servers against the newest roots, if
// TLSCAReload is set and tc, as decorators left it, still trusts the roots it was built with
// and verifies: roots or a verification of a decorator's own are used as they are, and it
// reports false. A VerifyConnection of tc's still runs, after the chain is verified, as
// crypto/tls runs it. tc is cloned so that a *tls.Config shared with other clients is never
// changed.
func (f *tlsFiles) installCAReload(tc *tls.Config) (*tls.Config, bool) {
	if f == nil || !f.caReload {
		return tc, true
	}
	if tc == nil || tc.RootCAs != f.given || tc.InsecureSkipVerify {
		return tc, false
	}
	theirs := tc.VerifyConnection
	tc = tc.Clone()
	tc.InsecureSkipVerify = true // crypto/tls's own verification gives way to verifyConnection's
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := f.verifyConnection(cs); err != nil {
			return err
		}
		if theirs != nil {
			return theirs(cs)
		}
		return nil
	}
	return tc, true
}

// verifyConnection is the TLS config's VerifyConnection with TLSCAReload, in place of
// crypto/tls's own verification (InsecureSkipVerify is set so that it runs alone, as
// crypto/tls documents for a verification of one's own): the server's chain against the
// newest roots, for the name the client asked for. crypto/tls does not tell a
// VerifyConnection the address of a host given as an IP address, which it sends no name for:
// such a host is refused, saying why.
func (f *tlsFiles) verifyConnection(cs tls.ConnectionState) error {
	f.check()
	if len(cs.PeerCertificates) == 0 {
		return errors.New("httpfx: TLS: the server sent no certificate")
	}
	if cs.ServerName == "" {
		return errors.New("httpfx: TLS: with TLSCAReload, a host given as an IP address cannot be verified (crypto/tls does not say which); set TLSServerName to the name in its certificate, or turn TLSCAReload off")
	}
	opts := x509.VerifyOptions{Roots: f.roots.Load(), DNSName: cs.ServerName, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	return nil
}

// check re-reads the files that changed, if the last check is every old.
func (f *tlsFiles) check() {
	if f.every <= 0 || time.Now().UnixNano()-f.checkedAt.Load() < int64(f.every) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Now().UnixNano()-f.checkedAt.Load() < int64(f.every) {
		return // another handshake checked meanwhile
	}
	f.checkedAt.Store(time.Now().UnixNano())
	log := f.log.Load()
	if log == nil {
		log = zap.NewNop()
	}
	if f.certFile != "" {
		if sig, err := sigOf(f.certFile, f.keyFile); err == nil && sig != f.pairSig && sig != f.pairFailed {
			pair, err := loadPair(f.certFile, f.keyFile)
			if err != nil {
				f.pairFailed = sig
				log.Warn("httpfx client certificate files changed but do not load; the last good certificate is presented", zap.Error(err))
			} else {
				f.setPair(pair, sig)
				f.sessions.reset() // a resumed session would keep the old certificate's identity
				log.Info("httpfx client certificate reloaded", zap.Time("not_after", pair.Leaf.NotAfter))
			}
		}
	}
	if f.caReload && f.caFile != "" {
		if sig, err := sigOf(f.caFile); err == nil && sig != f.caSig && sig != f.caFailed {
			pool, err := f.loadRoots()
			if err != nil {
				f.caFailed = sig
				log.Warn("httpfx CA file changed but does not load; the last good roots verify servers", zap.Error(err))
			} else {
				f.roots.Store(pool)
				f.caSig = sig
				f.sessions.reset() // a resumed session skips the server's certificate, checked with the old roots
				log.Info("httpfx CA file reloaded")
			}
		}
	}
}

// loadPair loads a certificate and key pair, with its leaf parsed.
func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if pair.Leaf == nil { // parsed by LoadX509KeyPair since Go 1.23
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &pair, nil
}

// sigOf returns the signature of the files.
func sigOf(files ...string) (fileSig, error) {
	var sig fileSig
	for i, name := range files {
		fi, err := os.Stat(name)
		if err != nil {
			return sig, err
		}
		sig[i].size, sig[i].mod = fi.Size(), fi.ModTime().UnixNano()
	}
	return sig, nil
}

// sessionCache is the client session cache of the owned transport: an LRU cache of
// crypto/tls's that reset replaces with an empty one, so that no session made with a client
// certificate that was replaced is resumed (a resumed session keeps the identity of the
// certificate it was made with). It is safe for concurrent use.
type sessionCache struct {
	size  int
	files *tlsFiles // checked before a session is resumed; nil if none
	lru   atomic.Pointer[tls.ClientSessionCache]
}

var _ tls.ClientSessionCache = (*sessionCache)(nil)

func newSessionCache(size int) *sessionCache {
	c := &sessionCache{size: size}
	c.reset()
	return c
}

// Get implements tls.ClientSessionCache. Every handshake asks it first: the TLS files are
// checked then, since a resumed handshake asks for no certificate and verifies none.
func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	if c.files != nil {
		c.files.check()
	}
	return (*c.lru.Load()).Get(key)
}

// Put implements tls.ClientSessionCache.
func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) { (*c.lru.Load()).Put(key, cs) }

// reset empties the cache; nil-safe.
func (c *sessionCache) reset() {
	if c != nil {
		lru := tls.NewLRUClientSessionCache(c.size)
		c.lru.Store(&lru)
	}
}
