package httpfx_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
)

// The benchmarks below compare the owned httpfx client with a raw *http.Transport built with
// the same Config values and the same bounds, set net/http's way (raw: ResponseHeaderTimeout on
// the transport, Timeout on the http.Client; twice: rawAA is the A/A control), and with the
// cheapest pooled transport, without timeouts (rawtuned), over loopback test servers. Names are
// BenchmarkClient/<proto>/<seq|par|par-ctx>/<variant>, so that benchstat can put them side by
// side:
//
//	go test -bench . -benchmem -run '^$' -count 10 . | tee new.txt
//
// Besides ns/op and allocs/op, each benchmark reports conns/op: connections the server
// accepted per request in the timed part (near zero when connections are reused).

// benchBody is the response body of the benchmark handler, about 100 bytes.
var benchBody = []byte(strings.Repeat("httpfx-benchmark-body. ", 4) + "end-of-body.\n")

// benchParallelism multiplies GOMAXPROCS for the par benchmarks, so that a 2-core machine
// still runs several callers at once and the pool serves concurrent requests.
const benchParallelism = 4

// benchProto is one kind of upstream.
type benchProto struct {
	name      string
	start     func(testing.TB, http.Handler) *testutil.Server
	wantMajor int // the HTTP major version the clients must negotiate
}

var benchProtos = []benchProto{
	{name: "http1", start: testutil.NewServer, wantMajor: 1},
	{name: "tls", start: func(tb testing.TB, h http.Handler) *testutil.Server { return testutil.NewTLSServer(tb, h, false) }, wantMajor: 1},
	{name: "h2", start: func(tb testing.TB, h http.Handler) *testutil.Server { return testutil.NewTLSServer(tb, h, true) }, wantMajor: 2},
}

// benchClient is a client under test and the function that stops it.
type benchClient struct {
	client *http.Client
	stop   func(testing.TB)
}

// benchVariant builds a client for the upstream u; roots is nil for plain HTTP.
type benchVariant struct {
	name  string
	build func(tb testing.TB, roots *x509.CertPool) benchClient
}

// benchVariants are the clients compared. rawAA is the A/A control: raw again, built the same
// way, so that its ratio to raw is the noise of the run.
var benchVariants = []benchVariant{
	{name: "httpfx", build: buildHTTPFX},
	{name: "raw", build: buildRaw},
	{name: "rawAA", build: buildRaw},
	{name: "rawtuned", build: buildRawTuned},
}

// benchOrder returns benchVariants rotated left by $HTTPFX_BENCH_ROTATE (a number; default 0),
// so that runs of the benchmarks can take turns at which variant runs first in each group:
// the bench's inpkg part rotates by one each run, against any effect of the position.
func benchOrder() []benchVariant {
	k, _ := strconv.Atoi(os.Getenv("HTTPFX_BENCH_ROTATE"))
	k = (k%len(benchVariants) + len(benchVariants)) % len(benchVariants)
	return append(slices.Clone(benchVariants[k:]), benchVariants[:k]...)
}

// buildHTTPFX builds the owned client with DefaultConfig, trusting roots, and stops it with
// Shutdown.
func buildHTTPFX(tb testing.TB, roots *x509.CertPool) benchClient {
	return buildOwned(tb, roots, httpfx.DefaultConfig())
}

// buildOwned builds the owned client with cfg, trusting roots, and stops it with Shutdown.
func buildOwned(tb testing.TB, roots *x509.CertPool, cfg httpfx.Config) benchClient {
	res, err := httpfx.New(httpfx.Params{Config: cfg})
	if err != nil {
		tb.Fatal(err)
	}
	res.Transport.TLSClientConfig.RootCAs = roots // before first use; MinVersion is kept
	c := res.Client
	return benchClient{client: c, stop: func(tb testing.TB) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := httpfx.Shutdown(ctx, res.Client); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
	}}
}

// buildRaw builds a bare *http.Transport with the same settings as httpfx's from
// DefaultConfig (by hand, so that nothing of httpfx is in the path), and an http.Client that
// enforces the same Timeout.
func buildRaw(tb testing.TB, roots *x509.CertPool) benchClient {
	cfg := httpfx.DefaultConfig()
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: cfg.KeepAlive}).DialContext
	t.Proxy = nil
	if cfg.ProxyFromEnvironment {
		t.Proxy = http.ProxyFromEnvironment
	}
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	t.TLSHandshakeTimeout = cfg.TLSHandshakeTimeout
	t.ResponseHeaderTimeout = cfg.ResponseHeaderTimeout
	t.ExpectContinueTimeout = cfg.ExpectContinueTimeout
	t.IdleConnTimeout = cfg.IdleConnTimeout
	t.MaxIdleConns = cfg.MaxIdleConns
	t.MaxIdleConnsPerHost = cfg.MaxIdleConnsPerHost
	t.MaxConnsPerHost = cfg.MaxConnsPerHost
	t.MaxResponseHeaderBytes = cfg.MaxResponseHeaderBytes
	t.DisableCompression = cfg.DisableCompression
	t.ForceAttemptHTTP2 = !cfg.DisableHTTP2
	c := &http.Client{Transport: t, Timeout: cfg.Timeout}
	return benchClient{client: c, stop: func(testing.TB) { t.CloseIdleConnections() }}
}

// buildRawTuned builds the hand-tuned transport a careful user writes without httpfx: a large
// idle pool per host, and no timeouts beyond the dial's and the TLS handshake's (no
// ResponseHeaderTimeout, no Client.Timeout): the cheapest client that is still pooled.
func buildRawTuned(tb testing.TB, roots *x509.CertPool) benchClient {
	t := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return benchClient{client: &http.Client{Transport: t}, stop: func(testing.TB) { t.CloseIdleConnections() }}
}

// benchScheds are how the callers send: one after another (seq) or in parallel (par), with a
// context that never ends, or in parallel each with a context of its own that can end
// (par-ctx), as a server's handlers pass their request's.
var benchScheds = []struct {
	name     string
	parallel bool
	ctx      bool
}{
	{name: "seq"},
	{name: "par", parallel: true},
	{name: "par-ctx", parallel: true, ctx: true},
}

// BenchmarkClient measures one GET of a ~100-byte body through httpfx's owned client and
// through a raw transport with the same settings, sequentially and from parallel callers,
// over HTTP/1.1, TLS with HTTP/1.1 and TLS with HTTP/2.
func BenchmarkClient(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(benchBody) })
	for _, p := range benchProtos {
		b.Run(p.name, func(b *testing.B) {
			for _, sched := range benchScheds {
				b.Run(sched.name, func(b *testing.B) {
					for _, v := range benchOrder() {
						b.Run(v.name, func(b *testing.B) { benchGets(b, p, h, sched.parallel, sched.ctx, v) })
					}
				})
			}
		})
	}
}

// benchGets runs one benchmark: a fresh server and client, one warm-up request that checks
// the negotiated protocol, b.N timed requests (each with a context of its own that can end, if
// withCtx), then the client is stopped and the server is waited for until it has seen every
// connection close (so a client that leaks connections fails here), before the server is
// closed by the cleanup.
func benchGets(b *testing.B, p benchProto, h http.Handler, parallel, withCtx bool, v benchVariant) {
	u := p.start(b, h)
	var roots *x509.CertPool
	if u.TLS != nil {
		roots = x509.NewCertPool()
		roots.AddCert(u.Certificate())
	}
	c := v.build(b, roots)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			c.stop(b)
		}
	}
	defer stop() // also on b.Fatal

	resp, err := c.client.Get(u.URL)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != p.wantMajor {
		b.Fatalf("negotiated %s, want HTTP/%d", resp.Proto, p.wantMajor)
	}

	b.ReportAllocs()
	opened := u.Opened()
	b.ResetTimer()
	if parallel {
		b.SetParallelism(benchParallelism)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := benchGetCtx(c.client, u.URL, withCtx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	} else {
		for i := 0; i < b.N; i++ {
			if err := benchGetCtx(c.client, u.URL, withCtx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(u.Opened()-opened)/float64(b.N), "conns/op")

	stop()
	testutil.WaitFor(b, "server sees all client connections closed", func() bool { return u.Open() == 0 })
}

// benchGetCtx is benchGet, with a context of its own that can end if withCtx.
func benchGetCtx(c *http.Client, url string, withCtx bool) error {
	if !withCtx {
		return benchGet(c, url)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return benchDo(c, req)
}

// benchGet sends one GET and reads and closes the body, as a well-behaved caller does.
func benchGet(c *http.Client, url string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return benchDo(c, req)
}

// benchDo sends req and reads and closes the body.
func benchDo(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || n != int64(len(benchBody)) {
		return fmt.Errorf("got status %d and %d bytes, want 200 and %d", resp.StatusCode, n, len(benchBody))
	}
	return nil
}

// BenchmarkNewConnection measures a request that needs a new TLS connection (the pool is
// flushed before each), with httpfx's client session cache (cache, twice: cacheAA is the A/A
// control) and without it (nocache: TLSSessionCacheSize 0), over TLS 1.2 and 1.3 with
// HTTP/1.1: the cost of the full handshake that resumption saves. Names are
// BenchmarkNewConnection/<tls12|tls13>/<variant>.
func BenchmarkNewConnection(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(benchBody) })
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		name := map[uint16]string{tls.VersionTLS12: "tls12", tls.VersionTLS13: "tls13"}[version]
		b.Run(name, func(b *testing.B) {
			for _, v := range []struct {
				name  string
				cache int
			}{{"nocache", 0}, {"nocacheAA", 0}, {"cache", 1024}} {
				b.Run(v.name, func(b *testing.B) {
					u := testutil.NewUnstartedServer(b, h)
					u.TLS = &tls.Config{MaxVersion: version}
					u.StartTLS()
					roots := x509.NewCertPool()
					roots.AddCert(u.Certificate())
					cfg := httpfx.DefaultConfig()
					cfg.TLSSessionCacheSize = v.cache
					c := buildOwned(b, roots, cfg)
					defer c.stop(b)
					b.ReportAllocs()
					for i := 0; i < b.N; i++ {
						httpfx.CloseIdleConnections(c.client)
						if err := benchGet(c.client, u.URL); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					b.ReportMetric(float64(u.Opened())/float64(b.N+0), "conns/op")
				})
			}
		})
	}
}
