package httpfx_test

import (
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// newH2Upstream starts a TLS upstream offering HTTP/2 (or not) with room for streams
// concurrent requests per connection, and returns the option that makes the owned transport
// trust it.
func newH2Upstream(t *testing.T, http2 bool, streams int) (*testutil.Server, fx.Option) {
	t.Helper()
	u := testutil.NewUnstartedServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	u.EnableHTTP2 = http2
	u.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: streams}
	u.StartTLS()
	t.Cleanup(u.Close)
	roots := x509.NewCertPool()
	roots.AddCert(u.Certificate())
	return u, fx.Decorate(func(tr *http.Transport) *http.Transport {
		tr.TLSClientConfig.RootCAs = roots
		return tr
	})
}

// burst sends n concurrent GETs and returns the protocols of the responses.
func burst(t *testing.T, c *http.Client, url string, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	protos := map[string]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := get(c, url)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p = err.Error()
			}
			protos[p]++
		}()
	}
	wg.Wait()
	return protos
}

// A cold burst to an HTTP/2 upstream dials one connection, not one per request; after the
// pool is emptied, the next cold burst is gated again. An HTTP/1.1 TLS upstream still gets
// the connections its concurrency needs.
func TestColdBurstDialsOnceForHTTP2(t *testing.T) {
	const n = 64
	t.Run("HTTP/2", func(t *testing.T) {
		u, trust := newH2Upstream(t, true, 1000)
		var g graph
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), trust)
		app.RequireStart()
		for round := range 2 {
			if got := burst(t, g.Client, u.URL, n); got["HTTP/2.0"] != n {
				t.Fatalf("round %d: responses by protocol %v, want %d over HTTP/2.0", round, got, n)
			}
			if opened := u.Opened(); opened != int64(round+1) {
				t.Errorf("after cold burst %d the server accepted %d connections, want %d: one per burst", round+1, opened, round+1)
			}
			// Empty the pool, so that the next burst is cold again. (An HTTP/2 connection is
			// idle only once its streams are cleaned up, a moment after the last body.)
			testutil.WaitFor(t, "the connection closes", func() bool {
				httpfx.CloseIdleConnections(g.Client)
				return g.Stats.Snapshot().ConnsOpen == 0
			})
		}
		app.RequireStop()
		u.RequireNoConns(t)
	})
	t.Run("HTTP/1.1", func(t *testing.T) {
		u, trust := newH2Upstream(t, false, 0)
		var g graph
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), trust)
		app.RequireStart()
		if got := burst(t, g.Client, u.URL, n); got["HTTP/1.1"] != n {
			t.Fatalf("responses by protocol %v, want %d over HTTP/1.1", got, n)
		}
		if s := g.Stats.Snapshot(); s.ConnsOpened < 2 || s.ConnsOpen != s.ConnsOpened {
			t.Errorf("%d connections opened, %d open: want several, all kept", s.ConnsOpened, s.ConnsOpen)
		}
		app.RequireStop()
		u.RequireNoConns(t)
	})
}

// A cold burst to an HTTPS host that never answers the handshake is not served one handshake
// timeout after another: once the leader's handshake fails, its followers dial together, as
// net/http would send them, so the host sees them open at once.
func TestColdBurstToSilentHostDialsTogether(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var open, most atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := open.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			wg.Add(1)
			go func() { // never answers the ClientHello; the client closes on its timeout
				defer wg.Done()
				io.Copy(io.Discard, c)
				open.Add(-1)
				c.Close()
			}()
		}
	}()
	app, g := relApp(t, func(c *httpfx.Config) {
		c.TLSHandshakeTimeout = 300 * time.Millisecond
		c.Retry.MaxAttempts = 1
	})
	defer app.RequireStop()
	const n = 6
	var calls sync.WaitGroup
	for range n {
		calls.Add(1)
		go func() {
			defer calls.Done()
			resp, err := g.Client.Get("https://" + ln.Addr().String() + "/")
			if err == nil {
				resp.Body.Close()
				t.Error("a request to a host that never answers the handshake succeeded")
			}
		}()
	}
	calls.Wait()
	if got := most.Load(); got < n-1 {
		t.Errorf("at most %d connections were open at once; want the %d followers together", got, n-1)
	}
}
