package httpfx_test

import (
	"context"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
)

// deadlineMode is one way a request reaches the transport: plain HTTP, HTTPS over HTTP/1.1 or
// HTTP/2, through a round tripper that wraps the transport, to a host the HTTP/2 cold-start
// gate knows or not, under a caller's context that can end or not. The deadlines must hold in
// each.
type deadlineMode struct {
	name    string
	start   func(testing.TB, http.Handler) *testutil.Server
	tls     bool
	noHTTP2 bool // Config.DisableHTTP2
	wrapped bool // a round tripper decorates the transport
	ending  bool // the caller's context can end (it does not during the test)
	warm    bool // a request to the host first, so that the cold-start gate knows it
}

var deadlineModes = []deadlineMode{
	{name: "http", start: testutil.NewServer},
	{name: "https-http1-only", start: newH1TLSUpstream, tls: true, noHTTP2: true},
	{name: "https", start: newH1TLSUpstream, tls: true},
	{name: "h2", start: newH2TLSUpstream, tls: true},
	{name: "http-wrapped", start: testutil.NewServer, wrapped: true},
	{name: "h2-wrapped", start: newH2TLSUpstream, tls: true, wrapped: true},
	{name: "h2-known-ending-context", start: newH2TLSUpstream, tls: true, warm: true, ending: true},
	{name: "https-known-ending-context", start: newH1TLSUpstream, tls: true, warm: true, ending: true},
}

func newH1TLSUpstream(t testing.TB, h http.Handler) *testutil.Server {
	return testutil.NewTLSServer(t, h, false)
}
func newH2TLSUpstream(t testing.TB, h http.Handler) *testutil.Server {
	return testutil.NewTLSServer(t, h, true)
}

// passThrough is a round tripper that wraps another, as tracing and logging wrappers do.
type passThrough struct{ next http.RoundTripper }

func (p passThrough) RoundTrip(r *http.Request) (*http.Response, error) { return p.next.RoundTrip(r) }

// The timeouts bound each phase of a request in every mode: the wait for headers
// (ResponseHeaderTimeout), the whole request while headers are awaited and while the body is
// read (Config.Timeout). A slow upload is not a wait for headers. The error names the setting,
// is a net.Error timeout and wraps context.DeadlineExceeded; it never comes before the bound.
func TestDeadlinesInEveryMode(t *testing.T) {
	t.Parallel()
	noHeaders := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	stalls := func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
	echo := func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) }
	tests := []struct {
		give    string
		handler http.HandlerFunc
		timeout time.Duration // Config.Timeout
		headers time.Duration // Config.ResponseHeaderTimeout
		upload  bool          // POST a body sent in three parts 150ms apart
		want    string        // in the error; empty: the request succeeds
	}{
		{give: "headers never come", handler: noHeaders, headers: 200 * time.Millisecond,
			want: "Config.ResponseHeaderTimeout (200ms) waiting for the response headers"},
		{give: "Timeout while headers are awaited", handler: noHeaders, timeout: 200 * time.Millisecond,
			want: "Config.Timeout (200ms)"},
		{give: "Timeout while the body is read", handler: stalls, timeout: 300 * time.Millisecond, headers: time.Second,
			want: "Config.Timeout (300ms)"},
		{give: "a slow upload is not a wait for headers", handler: echo, headers: 200 * time.Millisecond, upload: true},
	}
	for _, m := range deadlineModes {
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.give, func(t *testing.T) {
				t.Parallel()
				u := m.start(t, warmable(tt.handler))
				edit := func(c *httpfx.Config) {
					c.Timeout, c.ResponseHeaderTimeout = tt.timeout, tt.headers
					c.DisableHTTP2 = m.noHTTP2
					if m.tls {
						c.TLSCAPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.Certificate().Raw}))
					}
				}
				var opts []fx.Option
				if m.wrapped {
					opts = append(opts, fx.Decorate(func(rt http.RoundTripper) http.RoundTripper { return passThrough{rt} }))
				}
				app, g := relApp(t, edit, opts...)
				defer app.RequireStop()
				if m.warm {
					warmUp(t, g.Client, u.URL)
				}

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if !m.ending {
					ctx = context.Background()
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.URL, nil)
				if tt.upload {
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, u.URL, &slowReader{parts: 3, gap: 150 * time.Millisecond})
				}
				var (
					body string
					err  error
				)
				began := time.Now()
				relWithin(t, hangBound, "the request", func() { body, _, err = send(g.Client, req) })
				took := time.Since(began)
				if tt.want == "" {
					if err != nil || body != "partpartpart" {
						t.Fatalf("got %q, %v; want the body echoed", body, err)
					}
					return
				}
				var ne net.Error
				if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &ne) || !ne.Timeout() ||
					!errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("err = %v; want a net.Error timeout wrapping context.DeadlineExceeded, saying %q", err, tt.want)
				}
				if bound := max(tt.timeout, tt.headers); took < min(bound, 200*time.Millisecond) {
					t.Errorf("failed after %v, before its bound", took)
				}
				if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Failed != 1 {
					t.Errorf("in flight %d, failed %d; want 0 and 1", s.InFlight, s.Failed)
				}
			})
		}
	}
}

// warmable answers a request with the header X-Warm at once, and passes the others to h.
func warmable(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Warm") != "" {
			io.WriteString(w, "warm")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// warmUp sends two requests that warmable answers, so that the cold-start gate knows the host
// and the requests after take the steady state's path.
func warmUp(t *testing.T, c *http.Client, url string) {
	t.Helper()
	for range 2 {
		req := newGet(t, url)
		req.Header.Set("X-Warm", "1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("warm-up: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// slowReader is a request body that cannot be rewound, sent in parts with a pause before each.
type slowReader struct {
	parts int
	gap   time.Duration
}

func (r *slowReader) Read(p []byte) (int, error) {
	if r.parts == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.gap)
	r.parts--
	return copy(p, "part"), nil
}

// A deadline that passes at once races net/http's registration of the request: every request
// still fails with the timeout, none hangs, in the fast, own and cancel modes.
func TestTimeoutRacingTheRoundTrip(t *testing.T) {
	t.Parallel()
	hang := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	for _, m := range deadlineModes {
		if m.ending || m.warm { // the same as its mode with a context that never ends, here; warm: TestKnownHTTP2HostRacingTheRoundTrip
			continue
		}
		t.Run(m.name, func(t *testing.T) {
			u := m.start(t, hang)
			var opts []fx.Option
			if m.wrapped {
				opts = append(opts, fx.Decorate(func(rt http.RoundTripper) http.RoundTripper { return passThrough{rt} }))
			}
			app, g := relApp(t, func(c *httpfx.Config) {
				c.Timeout, c.DisableHTTP2 = time.Millisecond, m.noHTTP2
				if m.tls {
					c.TLSCAPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.Certificate().Raw}))
				}
			}, opts...)
			defer app.RequireStop()
			for range 30 {
				var err error
				relWithin(t, hangBound, "a request past its 1ms Timeout", func() { _, _, err = send(g.Client, newGet(t, u.URL)) })
				if err == nil || !strings.Contains(err.Error(), "Config.Timeout (1ms)") {
					t.Fatalf("err = %v, want Config.Timeout", err)
				}
			}
			if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Failed != 30 {
				t.Errorf("in flight %d, failed %d; want 0 and 30", s.InFlight, s.Failed)
			}
		})
	}
}

// Time spent dialling for a request (here, a slow DNS answer) is not a wait for headers.
func TestDialIsNotAWaitForHeaders(t *testing.T) {
	t.Parallel()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	_, port, _ := net.SplitHostPort(u.Listener.Addr().String())
	cfg := httpfx.DefaultConfig()
	cfg.ResponseHeaderTimeout = 150 * time.Millisecond
	res, err := httpfx.New(httpfx.Params{Config: cfg, Resolver: slowResolver{400 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer httpfx.Shutdown(context.Background(), res.Client)
	body, _, err := send(res.Client, newGet(t, "http://slow.test:"+port))
	if err != nil || body != "ok" {
		t.Fatalf("got %q, %v; want ok: a slow dial must not count as waiting for headers", body, err)
	}
}

// slowResolver answers 127.0.0.1 for every name, after a delay.
type slowResolver struct{ delay time.Duration }

func (r slowResolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	select {
	case <-time.After(r.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}, nil
}
