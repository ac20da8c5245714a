package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
)

// variant is one way of building an HTTP client. Each cold cell and each first burst builds a
// fresh one and closes it afterwards; the warm mode builds one per group and reuses it. The
// globals http.DefaultClient and http.DefaultTransport are never used or changed: variants that
// mean "the default" clone DefaultTransport's settings.
type variant struct {
	name string
	desc string
	// extra marks a prototype that is measured and shown but is not one of the compared
	// ways of the issue, so it is left out of "best variant" in the bar check.
	extra bool
	// control marks the A/A copy of the baseline: identical to it, measured to show the
	// noise, never a "best variant".
	control bool
	// parts are the parts of a run the variant is in unless -variants names it.
	parts partSet
	build func(t target) (*clientUnderTest, error)
}

// target is what a variant is built for: the server's certificate, and the origin and the
// number of callers of the load that follows (for variants that prepare connections).
type target struct {
	roots *x509.CertPool // trusts the server's certificate
	base  string         // the load's origin URL with a trailing slash, e.g. "https://127.0.0.1:1234/"
	conc  int            // callers of the load
}

// clientUnderTest sends one request at a time per caller; get is safe for concurrent use.
type clientUnderTest struct {
	// get sends a GET, reads the body to EOF and closes it, and returns the negotiated
	// protocol (resp.Proto).
	get func(ctx context.Context, url string) (string, error)
	// start, if set, is run once after build and before any request, as an app's start
	// would be (fx's OnStart hooks); the first-burst part reports how long it took.
	start func(ctx context.Context) error
	// close releases the client's connections.
	close func(ctx context.Context) error
}

// baseline is the variant every ratio is relative to, and control its A/A copy.
const (
	baseline = "raw-tuned"
	control  = "raw-tuned-b"
)

// rawTunedDesc describes both raw-tuned and its A/A copy.
const rawTunedDesc = "hand-tuned *http.Transport: MaxIdleConnsPerHost 1024, no MaxIdleConns or MaxConnsPerHost limit, ForceAttemptHTTP2, httpfx's timeouts, Client.Timeout 30s"

// comparedVariants are the ways of building a client the bench compares, in report order.
func comparedVariants() []variant {
	return []variant{
		{
			name:  "httpfx",
			desc:  "httpfx.New with DefaultConfig() (zero config), stopped with httpfx.Shutdown",
			parts: variantParts,
			build: buildHTTPFX(httpfx.DefaultConfig()),
		},
		{
			name:  baseline,
			desc:  rawTunedDesc,
			parts: variantParts,
			build: buildRawTuned,
		},
		{
			name:    control,
			desc:    "A/A control: raw-tuned again, built the same way; its ratio to raw-tuned is the noise of the run",
			control: true,
			parts:   variantParts,
			build:   buildRawTuned,
		},
		{
			name:  "raw-bare",
			desc:  "raw-tuned without ResponseHeaderTimeout and Client.Timeout: the cheapest pooled client (the in-package benchmark's rawtuned); steady state only",
			parts: partWarm,
			build: buildRawBare,
		},
		{
			name:  "default",
			desc:  "http.DefaultTransport's settings (a Clone; 2 idle conns per host), no Client.Timeout",
			parts: variantParts,
			build: buildDefault,
		},
		{
			name:  "per-request",
			desc:  "anti-pattern: a new client over a new clone of DefaultTransport per request, idle conns closed after each",
			parts: partCells,
			build: buildPerRequest,
		},
		{
			name:  "cleanhttp",
			desc:  "github.com/hashicorp/go-cleanhttp DefaultPooledClient() (GOMAXPROCS+1 idle conns per host)",
			parts: variantParts,
			build: buildCleanhttp,
		},
		{
			name:  "httpfx-upstream",
			desc:  "an fx app with httpfx.Module and httpfx.Upstream(\"bench\", UpstreamConfig{BaseURL: <server>}), started with app.Start and stopped with app.Stop: the control of a pre-warming variant",
			parts: partStart,
			build: buildHTTPFXUpstream(func(t target) httpfx.UpstreamConfig { return httpfx.UpstreamConfig{BaseURL: t.base} }),
		},
		{
			name:  "httpfx-prewarm",
			desc:  "httpfx-upstream with UpstreamConfig.Prewarm = callers: connections opened at start",
			parts: partStart,
			build: buildHTTPFXUpstream(func(t target) httpfx.UpstreamConfig {
				return httpfx.UpstreamConfig{BaseURL: t.base, Prewarm: t.conc}
			}),
		},
	}
}

// fetch sends a GET through c, reads the body to EOF and closes it. Anything but a 200 with
// the full body is an error.
func fetch(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("new request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return resp.Proto, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || n != int64(len(responseBody)) {
		return resp.Proto, fmt.Errorf("got %s with %d bytes, want 200 OK with %d", resp.Status, n, len(responseBody))
	}
	return resp.Proto, nil
}

// buildHTTPFX returns a builder of httpfx's owned client with cfg. The TLS roots are set on
// the owned transport before first use, which keeps httpfx's MinVersion.
func buildHTTPFX(cfg httpfx.Config) func(target) (*clientUnderTest, error) {
	return func(t target) (*clientUnderTest, error) {
		res, err := httpfx.New(httpfx.Params{Config: cfg})
		if err != nil {
			return nil, fmt.Errorf("httpfx.New: %w", err)
		}
		res.Transport.TLSClientConfig.RootCAs = t.roots
		return owned(res), nil
	}
}

// buildHTTPFXUpstream returns a builder of an fx app with httpfx.Module and one upstream,
// "bench", configured by upstream(t); the variant's client is the upstream's. The owned
// transport trusts the server through fx.Decorate. Its start is app.Start, so whatever the
// upstream does at start (such as opening connections) happens before the load and is timed
// by the first-burst part; its close is app.Stop.
func buildHTTPFXUpstream(upstream func(target) httpfx.UpstreamConfig) func(target) (*clientUnderTest, error) {
	return func(t target) (*clientUnderTest, error) {
		var c struct {
			fx.In
			Client *http.Client `name:"bench"`
		}
		app := fx.New(
			fx.NopLogger,
			httpfx.Module,
			httpfx.Upstream("bench", upstream(t)),
			fx.Decorate(func(tr *http.Transport) *http.Transport {
				tr.TLSClientConfig.RootCAs = t.roots
				return tr
			}),
			fx.Populate(&c),
		)
		if err := app.Err(); err != nil {
			return nil, fmt.Errorf("fx.New: %w", err)
		}
		return &clientUnderTest{
			get:   func(ctx context.Context, url string) (string, error) { return fetch(ctx, c.Client, url) },
			start: app.Start,
			close: app.Stop,
		}, nil
	}
}

// owned wraps the client httpfx built, stopped with httpfx.Shutdown.
func owned(res httpfx.Result) *clientUnderTest {
	return &clientUnderTest{
		get: func(ctx context.Context, url string) (string, error) { return fetch(ctx, res.Client, url) },
		close: func(ctx context.Context) error {
			if err := httpfx.Shutdown(ctx, res.Client); err != nil {
				return fmt.Errorf("httpfx.Shutdown: %w", err)
			}
			return nil
		},
	}
}

// pooled wraps a client over one transport t, closed by closing t's idle connections.
func pooled(c *http.Client, t *http.Transport) *clientUnderTest {
	return &clientUnderTest{
		get: func(ctx context.Context, url string) (string, error) { return fetch(ctx, c, url) },
		close: func(context.Context) error {
			t.CloseIdleConnections()
			return nil
		},
	}
}

// buildRawTuned builds the hand-tuned transport: a large idle pool per host, no caps,
// httpfx's timeouts, and a Client.Timeout like httpfx's Config.Timeout.
func buildRawTuned(tg target) (*clientUnderTest, error) {
	t := rawTunedTransport(tg.roots)
	return pooled(&http.Client{Transport: t, Timeout: 30 * time.Second}, t), nil
}

// buildRawBare builds raw-tuned without its bounds on the wait for response headers and on
// the whole request, which cost a timer and allocations per request.
func buildRawBare(tg target) (*clientUnderTest, error) {
	t := rawTunedTransport(tg.roots)
	t.ResponseHeaderTimeout = 0
	return pooled(&http.Client{Transport: t}, t), nil
}

// rawTunedTransport is raw-tuned's transport.
func rawTunedTransport(roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          0, // no limit
		MaxIdleConnsPerHost:   1024,
		MaxConnsPerHost:       0, // no limit
		ForceAttemptHTTP2:     true,
	}
}

// defaultClone is a fresh clone of http.DefaultTransport's settings, trusting roots.
func defaultClone(roots *x509.CertPool) (*http.Transport, error) {
	dt, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, errors.New("http.DefaultTransport is not an *http.Transport")
	}
	t := dt.Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: roots}
	return t, nil
}

// buildDefault builds what sharing http.DefaultClient gives, on a private clone.
func buildDefault(tg target) (*clientUnderTest, error) {
	t, err := defaultClone(tg.roots)
	if err != nil {
		return nil, err
	}
	return pooled(&http.Client{Transport: t}, t), nil
}

// buildPerRequest builds the anti-pattern: every request gets a new client and transport,
// whose connection is closed once the body is read.
func buildPerRequest(tg target) (*clientUnderTest, error) {
	roots := tg.roots
	if _, err := defaultClone(roots); err != nil {
		return nil, err
	}
	return &clientUnderTest{
		get: func(ctx context.Context, url string) (string, error) {
			t, err := defaultClone(roots)
			if err != nil {
				return "", err
			}
			defer t.CloseIdleConnections()
			return fetch(ctx, &http.Client{Transport: t}, url)
		},
		close: func(context.Context) error { return nil },
	}, nil
}

// buildCleanhttp builds go-cleanhttp's pooled client.
func buildCleanhttp(tg target) (*clientUnderTest, error) {
	c := cleanhttp.DefaultPooledClient()
	t, ok := c.Transport.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("cleanhttp transport is %T, want *http.Transport", c.Transport)
	}
	t.TLSClientConfig = &tls.Config{RootCAs: tg.roots}
	return pooled(c, t), nil
}

// allVariants are the compared variants followed by the prototypes.
func allVariants() []variant {
	return append(comparedVariants(), prototypes()...)
}

// prototypes are httpfx configurations measured next to the compared variants, to show the
// effect of a default that could change. They are marked extra, and run only when -variants
// names them.
func prototypes() []variant {
	return []variant{
		{
			name:  "httpfx-cap64",
			desc:  "httpfx with MaxConnsPerHost 64, other settings default: cuts the cold-start dial storm, caps throughput at 64 ÷ upstream latency",
			extra: true,
			build: buildHTTPFX(withConnsPerHost(64)),
		},
		{
			name:  "httpfx-dialgate",
			desc:  "httpfx defaults, plus at most 16 dials (TCP connect and TLS handshake) at a time, and a queued dial is skipped if the request that started it has already been served by another connection",
			extra: true,
			build: buildGatedHTTPFX(httpfx.DefaultConfig(), 16),
		},
	}
}

func withConnsPerHost(n int) httpfx.Config {
	c := httpfx.DefaultConfig()
	c.MaxConnsPerHost = n
	return c
}

// errStaleDial is returned instead of dialling for a request that no longer needs the
// connection. net/http discards it: the request was already served.
var errStaleDial = errors.New("bench: dial skipped: its request was served by another connection")

// dialMarker is the context of one request of the dialgate prototype. net/http dials with a
// context that keeps the request context's values, so the gated dial function finds the
// marker and can tell whether the request that started the dial is still waiting for it.
// It costs one allocation per request.
type dialMarker struct {
	context.Context
	served atomic.Bool
}

type dialMarkerKey struct{}

func (m *dialMarker) Value(key any) any {
	if key == (dialMarkerKey{}) {
		return m
	}
	return m.Context.Value(key)
}

// stale reports whether ctx belongs to a request that has already been served.
func stale(ctx context.Context) bool {
	m, _ := ctx.Value(dialMarkerKey{}).(*dialMarker)
	return m != nil && m.served.Load()
}

// buildGatedHTTPFX returns a builder of httpfx's client whose owned transport, adjusted in
// place before first use, runs at most n dials at once, counting the TCP connect and, for
// TLS, the handshake (which net/http otherwise runs after DialContext returns), and skips a
// dial whose request was served meanwhile. net/http starts a dial for every request that
// finds no idle connection and does not cancel it when an idle connection serves the request
// first, so without the skip a cold burst of n callers always dials n times. The gate wraps
// httpfx's own counting DialContext, so httpfx still owns and records every connection.
func buildGatedHTTPFX(cfg httpfx.Config, n int) func(target) (*clientUnderTest, error) {
	return func(tg target) (*clientUnderTest, error) {
		res, err := httpfx.New(httpfx.Params{Config: cfg})
		if err != nil {
			return nil, fmt.Errorf("httpfx.New: %w", err)
		}
		t := res.Transport
		t.TLSClientConfig.RootCAs = tg.roots
		gate := make(chan struct{}, n)
		dial := t.DialContext // httpfx's counting dialer
		acquire := func(ctx context.Context) error {
			select {
			case gate <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			if stale(ctx) {
				<-gate
				return errStaleDial
			}
			return nil
		}
		t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if err := acquire(ctx); err != nil {
				return nil, err
			}
			defer func() { <-gate }()
			return dial(ctx, network, addr)
		}
		tlsCfg := t.TLSClientConfig.Clone()
		if !cfg.DisableHTTP2 {
			tlsCfg.NextProtos = []string{"h2", "http/1.1"}
		}
		t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if err := acquire(ctx); err != nil {
				return nil, err
			}
			defer func() { <-gate }()
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, fmt.Errorf("dial %s: %w", addr, err)
			}
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			c := tlsCfg.Clone()
			c.ServerName = host
			tc := tls.Client(conn, c)
			hctx, cancel := context.WithTimeout(ctx, cfg.TLSHandshakeTimeout)
			defer cancel()
			if err := tc.HandshakeContext(hctx); err != nil {
				conn.Close()
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			return tc, nil
		}
		cu := owned(res)
		cu.get = func(ctx context.Context, url string) (string, error) {
			m := &dialMarker{Context: ctx}
			defer m.served.Store(true)
			return fetch(m, res.Client, url)
		}
		return cu, nil
	}
}
