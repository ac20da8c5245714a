package httpfx_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// pki is a throw-away certificate authority with files in a test's temporary directory.
type pki struct {
	t      testing.TB
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	CAFile string
	pool   *x509.CertPool
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "httpfx test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{t: t, dir: t.TempDir(), ca: ca, caKey: key, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.CAFile = p.write("ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(name, kind string, der []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// issue returns a certificate signed by the CA for the given names (DNS names or IPs), usable
// by servers and clients, and the paths of its PEM files.
func (p *pki) issue(name string, hosts ...string) (cert tls.Certificate, certFile, keyFile string) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		p.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	certFile = p.write(name+".pem", "CERTIFICATE", der)
	keyFile = p.write(name+"-key.pem", "PRIVATE KEY", keyDER)
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		p.t.Fatal(err)
	}
	return cert, certFile, keyFile
}

// newMTLSUpstream starts a TLS server offering HTTP/2 with a certificate of p for hosts,
// requiring a client certificate of p if mutual is set. It answers with the protocol used.
func newMTLSUpstream(t testing.TB, p *pki, mutual bool, hosts ...string) *testutil.Server {
	t.Helper()
	cert, _, _ := p.issue("server", hosts...)
	u := testutil.NewUnstartedServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	u.Config.ErrorLog = nopLog() // handshake failures are the point of some tests
	u.EnableHTTP2 = true
	u.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if mutual {
		u.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		u.TLS.ClientCAs = p.pool
	}
	u.StartTLS()
	t.Cleanup(u.Close)
	return u
}

func TestMutualTLSOverHTTP2(t *testing.T) {
	p := newPKI(t)
	u := newMTLSUpstream(t, p, true, "127.0.0.1")
	_, certFile, keyFile := p.issue("client")

	tests := []struct {
		name    string
		give    func(*httpfx.Config)
		want    string // the response body: the protocol
		wantErr string
	}{
		{"with the client certificate", func(c *httpfx.Config) {
			c.TLSCAFile, c.TLSCAOnly, c.TLSCertFile, c.TLSKeyFile = p.CAFile, true, certFile, keyFile
		}, "HTTP/2.0", ""},
		{"without it", func(c *httpfx.Config) { c.TLSCAFile, c.TLSCAOnly = p.CAFile, true }, "", "asked for a client certificate and none is configured"},
		{"without the CA", func(c *httpfx.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile }, "", "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var client *http.Client
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, withConfig(tt.give), fx.Populate(&client))
			app.RequireStart()
			got, err := get(client, u.URL)
			switch {
			case tt.wantErr == "" && (err != nil || got != tt.want):
				t.Errorf("GET = %q, %v; want %q", got, err, tt.want)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("GET = %q, %v; want an error containing %q", got, err, tt.wantErr)
			}
			app.RequireStop()
		})
	}
	u.RequireNoConns(t)
}

func TestTLSSettings(t *testing.T) {
	p := newPKI(t)
	named := newMTLSUpstream(t, p, false, "upstream.internal")
	caPEM, err := os.ReadFile(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	tls12 := newMTLSUpstream(t, p, false, "127.0.0.1")
	tls12.TLS.MaxVersion = tls.VersionTLS12 // applies to new handshakes
	tls11 := newMTLSUpstream(t, p, false, "127.0.0.1")
	tls11.TLS.MinVersion, tls11.TLS.MaxVersion = tls.VersionTLS10, tls.VersionTLS11

	tests := []struct {
		name    string
		url     string
		give    func(*httpfx.Config)
		wantErr string
	}{
		{"server name override", named.URL, func(c *httpfx.Config) { c.TLSCAPEM, c.TLSServerName = string(caPEM), "upstream.internal" }, ""},
		{"without the override the name does not match", named.URL, func(c *httpfx.Config) { c.TLSCAPEM = string(caPEM) }, "cannot validate certificate for 127.0.0.1"},
		{"TLS 1.2 is accepted by default", tls12.URL, func(c *httpfx.Config) { c.TLSCAPEM = string(caPEM) }, ""},
		{"TLS 1.3 minimum refuses a 1.2 server", tls12.URL, func(c *httpfx.Config) { c.TLSCAPEM, c.TLSMinVersion = string(caPEM), "1.3" }, "protocol version"},
		{"the default refuses a TLS 1.1 server", tls11.URL, func(c *httpfx.Config) { c.TLSCAPEM = string(caPEM) }, "protocol version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var client *http.Client
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, withConfig(tt.give), fx.Populate(&client))
			app.RequireStart()
			_, err := get(client, tt.url)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("GET: %v, want success", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("GET: %v, want an error containing %q", err, tt.wantErr)
			}
			app.RequireStop()
		})
	}
	named.RequireNoConns(t)
	tls12.RequireNoConns(t)
	tls11.RequireNoConns(t)
}

func TestBadTLSConfigFailsFxNew(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	_, certFile, keyFile := p.issue("client")
	_, _, otherKey := p.issue("other")
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	tests := []struct {
		name string
		give func(*httpfx.Config)
		want string
	}{
		{"missing CA file", func(c *httpfx.Config) { c.TLSCAFile = "/nonexistent/ca.pem" },
			"httpfx: config: TLSCAFile: open /nonexistent/ca.pem: no such file or directory"},
		{"CA file without certificates", func(c *httpfx.Config) { c.TLSCAFile = notPEM }, "TLSCAFile \"" + notPEM + "\" holds no PEM certificate"},
		{"CA PEM without certificates", func(c *httpfx.Config) { c.TLSCAPEM = "junk" }, "TLSCAPEM holds no PEM certificate"},
		{"CA only without a CA", func(c *httpfx.Config) { c.TLSCAOnly = true }, "TLSCAOnly is set but neither TLSCAFile nor TLSCAPEM is"},
		{"key not matching the certificate", func(c *httpfx.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, otherKey },
			"TLSCertFile/TLSKeyFile \"" + certFile + "\"/\"" + otherKey + "\": tls: private key does not match public key"},
		{"certificate without key", func(c *httpfx.Config) { c.TLSCertFile = certFile }, "TLSCertFile is set but TLSKeyFile is not"},
		{"key without certificate", func(c *httpfx.Config) { c.TLSKeyFile = keyFile }, "TLSKeyFile is set but TLSCertFile is not"},
		{"missing key file", func(c *httpfx.Config) { c.TLSCertFile, c.TLSKeyFile = certFile, "/nonexistent/key.pem" }, "TLSCertFile/TLSKeyFile"},
		{"TLS 1.1", func(c *httpfx.Config) { c.TLSMinVersion = "1.1" }, `TLSMinVersion is "1.1": want "1.2" or "1.3"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fx.New(fx.NopLogger, httpfx.Module, withConfig(tt.give)).Err()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("fx.New error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// Skipping certificate verification is never silent: every start warns.
func TestInsecureSkipVerifyWarnsAtEveryStart(t *testing.T) {
	p := newPKI(t)
	u := newMTLSUpstream(t, p, false, "127.0.0.1")
	core, logs := observer.New(zap.WarnLevel)
	for range 2 {
		var client *http.Client
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)), fx.Populate(&client),
			withConfig(func(c *httpfx.Config) { c.TLSInsecureSkipVerify = true }))
		app.RequireStart()
		if _, err := get(client, u.URL); err != nil {
			t.Fatalf("with verification off: %v", err)
		}
		app.RequireStop()
	}
	if n := logs.FilterMessageSnippet("certificate verification is OFF").Len(); n != 2 {
		t.Errorf("%d warnings for 2 starts, want 2", n)
	}
	u.RequireNoConns(t)
}

func nopLog() *log.Logger { return log.New(io.Discard, "", 0) }

// The mutual-TLS hint names the host that asked for a certificate, and only that host: an
// unrelated host that cuts the connection gets no hint.
func TestClientCertificateHintIsPerHost(t *testing.T) {
	p := newPKI(t)
	asker := newMTLSUpstream(t, p, false, "127.0.0.1")
	asker.TLS.ClientAuth = tls.RequestClientCert // asks, does not require
	cert, _, _ := p.issue("cutter", "127.0.0.1")
	cutter := testutil.NewUnstartedServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close() // cut, without asking for anything
		}
	}))
	cutter.Config.ErrorLog = nopLog()
	cutter.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	cutter.StartTLS()
	t.Cleanup(cutter.Close)

	var client *http.Client
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&client),
		withConfig(func(c *httpfx.Config) { c.TLSCAFile = p.CAFile }))
	app.RequireStart()
	mustGet(t, client, asker.URL) // asker asked for a certificate, and served without one
	_, err := get(client, cutter.URL)
	if err == nil || strings.Contains(err.Error(), "client certificate") {
		t.Errorf("a host that never asked cut the connection: %v, want an error without the mutual-TLS hint", err)
	}
	app.RequireStop()
	asker.RequireNoConns(t)
	cutter.RequireNoConns(t)
}

// handshakes counts the TLS handshakes a server completed, full and resumed, and the serial
// number of the client certificate each connection presented (0 if none).
type handshakes struct {
	mu            sync.Mutex
	seen          map[net.Conn]bool
	full, resumed int
	clientSerials []int64 // of the full handshakes
}

func (h *handshakes) track(c net.Conn, s http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if s != http.StateActive || !ok {
		return
	}
	cs := tc.ConnectionState()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[c] {
		return // active again, for another request
	}
	if h.seen == nil {
		h.seen = map[net.Conn]bool{}
	}
	h.seen[c] = true
	if cs.DidResume {
		h.resumed++
		return
	}
	h.full++
	if len(cs.PeerCertificates) > 0 {
		h.clientSerials = append(h.clientSerials, cs.PeerCertificates[0].SerialNumber.Int64())
	}
}

// verified is a server's VerifyConnection, which crypto/tls calls for every handshake.
func (h *handshakes) verified(cs tls.ConnectionState) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cs.DidResume {
		h.resumed++
	} else {
		h.full++
	}
	return nil
}

func (h *handshakes) counts() (full, resumed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.full, h.resumed
}

// A new connection to a server the client talked to resumes a session from the one cache
// that the shared client and every upstream client share: with connections replaced every
// few tens of milliseconds (MaxConnLifetime) and several callers, only the first connection of
// each caller (at most) pays a full handshake, over TLS 1.2 and 1.3; Stats counts the same.
func TestSessionsResume(t *testing.T) {
	t.Parallel()
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, through := range []string{"shared", "upstream"} {
			t.Run(fmt.Sprintf("%s/%s", tls.VersionName(version), through), func(t *testing.T) {
				t.Parallel()
				hs := new(handshakes)
				u := testutil.NewUnstartedServer(t, okHandler())
				u.EnableHTTP2 = false // one connection per caller, replaced by MaxConnLifetime
				u.TLS = &tls.Config{MaxVersion: version, VerifyConnection: hs.verified}
				u.StartTLS()
				var g graph
				var up *http.Client
				app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), trustServer(u.Server),
					withConfig(func(c *httpfx.Config) { c.MaxConnLifetime = 20 * time.Millisecond }),
					httpfx.Upstream("svc", httpfx.UpstreamConfig{BaseURL: u.URL + "/"}),
					fx.Invoke(fx.Annotate(func(c *http.Client) { up = c }, fx.ParamTags(`name:"svc"`))))
				app.RequireStart()
				client, url := g.Client, u.URL
				if through == "upstream" {
					client, url = up, "x"
				}
				const callers, each = 4, 6
				var wg sync.WaitGroup
				for range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range each {
							mustGet(t, client, url)
							time.Sleep(30 * time.Millisecond) // past the lifetime: the next request dials
						}
					}()
				}
				wg.Wait()
				s := g.Stats.Snapshot()
				app.RequireStop()
				full, resumed := hs.counts()
				if full > callers || resumed < callers {
					t.Errorf("server: %d full and %d resumed handshakes for %d callers of %d requests; want at most %d full",
						full, resumed, callers, each, callers)
				}
				// Stats counts the connections a request took: the server may also have seen
				// some dialled for a request that took another and closed unused (a few,
				// more under the race detector's slower scheduling).
				if s.HandshakesFull > int64(full) || s.HandshakesResumed > int64(resumed) || s.HandshakesFull+s.HandshakesResumed < int64(full+resumed)-callers {
					t.Errorf("Stats: %d full, %d resumed; the server saw %d and %d", s.HandshakesFull, s.HandshakesResumed, full, resumed)
				}
			})
		}
	}
}

// The client certificate files are replaced while requests flow: new connections present the
// new certificate within TLSReloadInterval, no request fails, and a broken version of the
// files in between changes nothing. Sessions made with the old certificate are not resumed.
func TestClientCertificateRotation(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	serverCert, _, _ := p.issue("server", "127.0.0.1")
	hs := new(handshakes)
	u := testutil.NewUnstartedServer(t, okHandler())
	u.EnableHTTP2 = false
	u.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool}
	states := u.Config.ConnState
	u.Config.ConnState = func(c net.Conn, s http.ConnState) { states(c, s); hs.track(c, s) }
	u.StartTLS()
	first, certFile, keyFile := p.issue("client", "client.test")
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withConfig(func(c *httpfx.Config) {
		c.TLSCAFile, c.TLSCAOnly, c.TLSCertFile, c.TLSKeyFile = p.CAFile, true, certFile, keyFile
		c.TLSReloadInterval, c.MaxConnLifetime = 20*time.Millisecond, 20*time.Millisecond
	}))
	app.RequireStart()
	serial := func(c tls.Certificate) int64 { return c.Leaf.SerialNumber.Int64() }
	if got := g.Stats.Snapshot().ClientCertNotAfter; !got.Equal(first.Leaf.NotAfter) {
		t.Errorf("ClientCertNotAfter %v, want %v", got, first.Leaf.NotAfter)
	}

	stop := make(chan struct{})
	var failures atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := get(g.Client, u.URL); err != nil {
					failures.Add(1)
					t.Errorf("request failed: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"), 0o600)
	time.Sleep(100 * time.Millisecond) // new connections still present the first certificate
	hs.mu.Lock()
	mark := len(hs.clientSerials)
	hs.mu.Unlock()
	second, _, _ := p.issue("client", "client.test") // writes both files anew
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	s := g.Stats.Snapshot()
	app.RequireStop()

	hs.mu.Lock()
	defer hs.mu.Unlock()
	for i, sn := range hs.clientSerials[:mark] {
		if sn != serial(first) {
			t.Errorf("connection %d, before the new files, presented serial %d, want %d", i, sn, serial(first))
		}
	}
	last := hs.clientSerials[len(hs.clientSerials)-1]
	if last != serial(second) {
		t.Errorf("the last connection presented serial %d, want the new certificate's %d (%v)", last, serial(second), hs.clientSerials)
	}
	if !s.ClientCertNotAfter.Equal(second.Leaf.NotAfter) {
		t.Errorf("ClientCertNotAfter %v, want the new certificate's %v", s.ClientCertNotAfter, second.Leaf.NotAfter)
	}
}

// With TLSCAReload, a new version of TLSCAFile applies to new handshakes: a server that moves
// to a certificate of another CA is trusted once the file holds that CA. A host given as an IP
// address is refused, saying why, unless TLSServerName names it.
func TestCAFileRotation(t *testing.T) {
	t.Parallel()
	old, next := newPKI(t), newPKI(t)
	oldCert, _, _ := old.issue("server", "svc.test")
	nextCert, _, _ := next.issue("server", "svc.test")
	var current atomic.Pointer[tls.Certificate]
	current.Store(&oldCert)
	u := testutil.NewUnstartedServer(t, okHandler())
	u.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil }}
	u.Config.ErrorLog = nopLog()
	u.StartTLS()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	copyFile(t, old.CAFile, caFile)

	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withConfig(func(c *httpfx.Config) {
		c.TLSCAFile, c.TLSCAOnly, c.TLSCAReload, c.TLSReloadInterval = caFile, true, true, 20*time.Millisecond
	}))
	app.RequireStart()
	if _, err := get(g.Client, u.URL); err == nil || !strings.Contains(err.Error(), "TLSServerName") {
		t.Errorf("GET by IP address: %v, want a refusal naming TLSServerName", err)
	}
	app.RequireStop()

	app = fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withConfig(func(c *httpfx.Config) {
		c.TLSCAFile, c.TLSCAOnly, c.TLSCAReload, c.TLSReloadInterval = caFile, true, true, 20*time.Millisecond
		c.TLSServerName = "svc.test"
		c.TLSSessionCacheSize = 0 // every handshake a full one, that verifies the server
	}))
	app.RequireStart()
	mustGet(t, g.Client, u.URL)
	copyFile(t, next.CAFile, caFile)
	time.Sleep(50 * time.Millisecond) // past TLSReloadInterval
	current.Store(&nextCert)
	httpfx.CloseIdleConnections(g.Client) // a new handshake
	if _, err := get(g.Client, u.URL); err != nil {
		t.Errorf("GET after the server moved to the new CA, the file too: %v", err)
	}
	current.Store(&oldCert) // the old CA is no longer trusted
	httpfx.CloseIdleConnections(g.Client)
	if _, err := get(g.Client, u.URL); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("GET to a certificate of the CA the file no longer holds: %v, want unknown authority", err)
	}
	app.RequireStop()
}

// With TLSCAReload, what a decorator says about verification stands: its VerifyConnection runs
// after the chain is verified against the file's roots, never in place of it; roots it sets
// are used as they are, without reload, and a warning says so.
func TestCAReloadKeepsDecoratorsVerification(t *testing.T) {
	t.Parallel()
	ours, theirs := newPKI(t), newPKI(t)
	oursCert, _, _ := ours.issue("server", "svc.test")
	theirsCert, _, _ := theirs.issue("server", "svc.test")
	tests := []struct {
		give       string
		decorate   func(*tls.Config, *atomic.Int64)
		wantOurs   bool // a server of our CA (the file's) is trusted
		wantTheirs bool // a server of the decorator's CA is trusted
		wantCalls  bool // the decorator's VerifyConnection ran
		wantWarn   bool
	}{
		{give: "no decorator", decorate: func(*tls.Config, *atomic.Int64) {}, wantOurs: true},
		{give: "a VerifyConnection of its own, set in place", decorate: func(tc *tls.Config, calls *atomic.Int64) {
			tc.VerifyConnection = func(tls.ConnectionState) error { calls.Add(1); return nil }
		}, wantOurs: true, wantCalls: true},
		{give: "roots of its own, set in place", decorate: func(tc *tls.Config, _ *atomic.Int64) {
			tc.RootCAs = theirs.pool
		}, wantTheirs: true, wantWarn: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			var current atomic.Pointer[tls.Certificate]
			u := testutil.NewUnstartedServer(t, okHandler())
			u.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil }}
			u.Config.ErrorLog = nopLog()
			u.StartTLS()
			core, logs := observer.New(zap.WarnLevel)
			var calls atomic.Int64
			var g graph
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), fx.Supply(zap.New(core)),
				withConfig(func(c *httpfx.Config) {
					c.TLSCAFile, c.TLSCAOnly, c.TLSCAReload = ours.CAFile, true, true
					c.TLSServerName = "svc.test"
					c.TLSSessionCacheSize = 0 // every handshake a full one, that verifies the server
				}),
				fx.Decorate(func(tr *http.Transport) *http.Transport {
					tt.decorate(tr.TLSClientConfig, &calls)
					return tr
				}))
			app.RequireStart()
			defer app.RequireStop()
			for _, c := range []struct {
				cert *tls.Certificate
				want bool
				name string
			}{{&oursCert, tt.wantOurs, "our CA's"}, {&theirsCert, tt.wantTheirs, "the decorator's CA's"}} {
				current.Store(c.cert)
				httpfx.CloseIdleConnections(g.Client) // a new handshake
				_, err := get(g.Client, u.URL)
				if got := err == nil; got != c.want {
					t.Errorf("a server with %s certificate: %v; want trusted: %v", c.name, err, c.want)
				}
			}
			if got := calls.Load() > 0; got != tt.wantCalls {
				t.Errorf("the decorator's VerifyConnection ran %d times; want it to run: %v", calls.Load(), tt.wantCalls)
			}
			if got := logs.FilterMessageSnippet("TLSCAReload is off").Len() > 0; got != tt.wantWarn {
				t.Errorf("warned that TLSCAReload is off: %v, want %v", got, tt.wantWarn)
			}
		})
	}
}

// copyFile writes the contents of from to to, replacing it.
func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
