package httpfx_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// Edge cases found in review; each test fails if its fix is undone.

// silentListener accepts TCP connections and never answers: a TLS handshake with it hangs.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

type trackedBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *trackedBody) Close() error { b.closed.Store(true); return nil }

// A request that gives up while it waits behind the first request to a new HTTPS host closes
// its body, as a RoundTripper must.
func TestGateFollowerClosesBodyOnGiveUp(t *testing.T) {
	addr := silentListener(t)
	app, g := relApp(t, func(c *httpfx.Config) { c.TLSHandshakeTimeout = 0 })
	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		req, _ := http.NewRequestWithContext(leaderCtx, http.MethodGet, "https://"+addr+"/", nil)
		if resp, err := g.Client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	testutil.WaitFor(t, "the leader is in flight", func() bool { return g.Stats.Snapshot().InFlight == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	body := &trackedBody{Reader: strings.NewReader("payload")}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+"/", body)
	if _, err := g.Client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("follower: %v, want its deadline", err)
	}
	if !body.closed.Load() {
		t.Error("the follower's request body was not closed")
	}
	cancelLeader()
	<-leaderDone
	app.RequireStop()
}

// A client certificate added by decorating the transport in place is presented: httpfx's
// hook that notes a server asking for one is installed only when none is configured.
func TestDecoratedClientCertificate(t *testing.T) {
	p := newPKI(t)
	u := newMTLSUpstream(t, p, true, "127.0.0.1")
	cert, _, _ := p.issue("client")
	var client *http.Client
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&client),
		withConfig(func(c *httpfx.Config) { c.TLSCAFile, c.TLSCAOnly = p.CAFile, true }),
		fx.Decorate(func(tr *http.Transport) *http.Transport {
			tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
			return tr
		}),
	)
	app.RequireStart()
	if got, err := get(client, u.URL); err != nil || got != "HTTP/2.0" {
		t.Errorf("GET = %q, %v; want HTTP/2.0 with the decorated certificate", got, err)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// The mutual-TLS hint is given only for HTTPS errors that look like a peer cutting the
// connection, not for every later error.
func TestClientCertificateHintIsNarrow(t *testing.T) {
	p := newPKI(t)
	optional := newMTLSUpstream(t, p, false, "127.0.0.1")
	optional.TLS.ClientAuth = tls.RequestClientCert // asks, does not require
	var client *http.Client
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&client),
		withConfig(func(c *httpfx.Config) { c.TLSCAFile = p.CAFile }))
	app.RequireStart()
	mustGet(t, client, optional.URL) // the server asked for a certificate
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := ln.Addr().String()
	ln.Close()
	_, err := get(client, "http://"+refused+"/")
	if err == nil || strings.Contains(err.Error(), "client certificate") {
		t.Errorf("connection refused on plain HTTP: %v, want no mutual-TLS hint", err)
	}
	app.RequireStop()
	optional.RequireNoConns(t)
}

// After stop, an upstream request whose slots are all taken is refused at once, not after a
// slot frees.
func TestUpstreamRefusedAtOnceWhenFull(t *testing.T) {
	release := testutil.NewGate()
	defer release.Release()
	u := testutil.NewServer(t, streamHandler(release, 1))
	var got struct {
		fx.In
		One    *http.Client `name:"one"`
		Shared *http.Client
	}
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&got),
		httpfx.Upstream("one", httpfx.UpstreamConfig{BaseURL: u.URL, MaxConnsPerHost: 1}))
	app.RequireStart()
	resp, err := got.One.Get("/hold")
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	testutil.WaitFor(t, "the gate closes", func() bool { return gateClosed(got.Shared, u.URL+"/probe") })
	refused := make(chan error, 1)
	go func() {
		_, err := get(got.One, "/probe")
		refused <- err
	}()
	select {
	case err := <-refused:
		if !errors.Is(err, httpfx.ErrClosed) {
			t.Errorf("upstream request after stop: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("a request to a full upstream after stop waited for a slot instead of failing with ErrClosed")
	}
	release.Release()
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	u.RequireNoConns(t)
}

// A header named by code and by configuration in another case is one header, and the
// configuration's value wins, every time.
func TestUpstreamHeaderCase(t *testing.T) {
	u := testutil.NewServer(t, echoHandler())
	for range 5 {
		cfg := httpfx.DefaultConfig()
		if err := cfg.ApplyEnv([]string{"HTTPFX_UPSTREAMS__PAY__HEADERS__AUTHORIZATION=from-env"}); err != nil {
			t.Fatal(err)
		}
		var got struct {
			fx.In
			Pay *http.Client `name:"pay"`
		}
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Replace(cfg), fx.Populate(&got),
			httpfx.Upstream("pay", httpfx.UpstreamConfig{BaseURL: u.URL, Headers: map[string]string{"authorization": "from-code"}}))
		app.RequireStart()
		if body := mustGet(t, got.Pay, "/x"); body != "/x auth=from-env v=" {
			t.Fatalf("got %q, want the configuration's Authorization", body)
		}
		app.RequireStop()
	}
	err := httpfx.Config{MaxIdleConnsPerHost: 1, Upstreams: map[string]httpfx.UpstreamConfig{
		"pay": {BaseURL: "https://pay", Headers: map[string]string{"X-Key": "a", "x-key": "b"}},
	}}.Validate()
	if err == nil || !strings.Contains(err.Error(), `upstream "pay": Headers: "X-Key" and "x-key" name the same header`) {
		t.Errorf("Validate() = %v, want the duplicate named", err)
	}
	u.RequireNoConns(t)
}

// A 101 stream outlives Config.Timeout (net/http stops watching the request's context after
// the upgrade), stays in flight until closed, and so is drained at stop.
func TestUpgradedStreamOutlivesTimeout(t *testing.T) {
	u := testutil.NewServer(t, echoUpgradeHandler(nil))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withConfig(func(c *httpfx.Config) { c.Timeout = 200 * time.Millisecond }))
	app.RequireStart()
	req, _ := http.NewRequest(http.MethodGet, u.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	stream := resp.Body.(io.ReadWriteCloser)
	time.Sleep(400 * time.Millisecond) // past Timeout
	io.WriteString(stream, "still here\n")
	if line, err := bufio.NewReader(stream).ReadString('\n'); err != nil || line != "echo: still here\n" {
		t.Fatalf("stream past Timeout: %q, %v", line, err)
	}
	if n := g.Stats.Snapshot().InFlight; n != 1 {
		t.Errorf("in flight = %d while the stream is open, want 1", n)
	}
	// Stop waits for the stream, whose context ended with its Timeout: it is no abandoned
	// body, and it still works meanwhile.
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	select {
	case err := <-stopped:
		t.Fatalf("stop returned (%v) while the stream was open", err)
	case <-time.After(100 * time.Millisecond):
	}
	io.WriteString(stream, "while stopping\n")
	if line, err := bufio.NewReader(stream).ReadString('\n'); err != nil || line != "echo: while stopping\n" {
		t.Fatalf("stream while stopping: %q, %v", line, err)
	}
	stream.Close()
	if err := <-stopped; err != nil {
		t.Errorf("stop: %v, want nil: the stream was closed within the drain bound", err)
	}
	u.RequireNoConns(t)
}

// A component that takes only the transport (a reverse proxy, say) is stopped before httpfx.
func TestTransportConsumerStopsFirst(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	var stopErr error
	app := fxtest.New(t, fx.NopLogger,
		fx.Invoke(func(lc fx.Lifecycle, tr *http.Transport) {
			lc.Append(fx.StopHook(func() {
				_, stopErr = get(&http.Client{Transport: tr}, u.URL)
			}))
		}),
		httpfx.Module,
	)
	app.RequireStart().RequireStop()
	if stopErr != nil {
		t.Fatalf("the transport consumer's OnStop request: %v; want httpfx still up", stopErr)
	}
	u.RequireNoConns(t)
}

// A request with a nil Header and a configured User-Agent neither panics nor stays in flight.
func TestNilHeaderWithUserAgent(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	app, g := relApp(t, func(c *httpfx.Config) { c.UserAgent = "svc/1" })
	req, _ := http.NewRequest(http.MethodGet, u.URL, nil)
	req.Header = nil
	resp, err := g.Client.Transport.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
	}
	if s := g.Stats.Snapshot(); s.InFlight != 0 {
		t.Errorf("in flight = %d, want 0", s.InFlight)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// A response without a body is finished at once, over HTTP/1.1 as over HTTP/2, where net/http
// does not hand out http.NoBody: an unclosed HEAD, 204 or empty response never holds stop.
func TestEmptyResponsesNeverHoldStop(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/empty":
			w.Header().Set("Content-Length", "0")
		}
	})
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			u := testutil.NewTLSServer(t, h, h2)
			roots := x509.NewCertPool()
			roots.AddCert(u.Certificate())
			var g graph
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
				fx.Decorate(func(tr *http.Transport) *http.Transport { tr.TLSClientConfig.RootCAs = roots; return tr }))
			app.RequireStart()
			for _, give := range []struct{ method, path string }{{http.MethodHead, "/"}, {http.MethodGet, "/204"}, {http.MethodGet, "/empty"}} {
				req, _ := http.NewRequest(give.method, u.URL+give.path, nil)
				if _, err := g.Client.Do(req); err != nil { // the body is never closed, on purpose
					t.Fatal(err)
				}
			}
			if n := g.Stats.Snapshot().InFlight; n != 0 {
				t.Errorf("%d requests in flight after three responses without a body, want 0", n)
			}
			app.RequireStop()
			u.RequireNoConns(t)
		})
	}
}

// A component that sends a request while the graph is built, in an app whose fx.New then
// fails, never gets httpfx's stop: nothing of httpfx outlives that request but the pooled
// connection, which IdleConnTimeout closes (the sweeper leaves once nothing is in flight).
func TestFailedNewLeavesNothingRunning(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	app := fx.New(fx.NopLogger, httpfx.Module,
		withConfig(func(c *httpfx.Config) { c.IdleConnTimeout = 100 * time.Millisecond }),
		fx.Invoke(func(c *http.Client) error { _, err := get(c, u.URL); return err }),
		fx.Invoke(func() error { return errors.New("a later invoke fails") }))
	if app.Err() == nil {
		t.Fatal("fx.New succeeded, want the invoke's error")
	}
	u.RequireNoConns(t)
}
