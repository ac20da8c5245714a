package httpfx_test

import (
	"context"
	"crypto/x509"
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
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Pre-warming opens an upstream's connections at start, before the first request, and sends
// no request; the first burst then opens none. HTTP/2 keeps one. Start succeeds, and says
// why, when the upstream is down.
func TestPrewarm(t *testing.T) {
	tests := []struct {
		name      string
		start     func(testing.TB, http.Handler) *testutil.Server
		give      int
		wantConns int64 // opened at start, and kept
	}{
		{"HTTP/1.1", testutil.NewServer, 4, 4},
		{"TLS, HTTP/1.1", func(tb testing.TB, h http.Handler) *testutil.Server { return testutil.NewTLSServer(tb, h, false) }, 3, 3},
		{"TLS, HTTP/2", func(tb testing.TB, h http.Handler) *testutil.Server { return testutil.NewTLSServer(tb, h, true) }, 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var served atomic.Int64
			u := tt.start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				served.Add(1)
				time.Sleep(20 * time.Millisecond) // so that a burst needs a connection per caller
			}))
			var g upstreams
			core, logs := observer.New(zap.InfoLevel)
			defer func() {
				if t.Failed() {
					t.Logf("logs: %v", logs.FilterMessageSnippet("pre-warm").All())
				}
			}()
			opts := []fx.Option{fx.NopLogger, httpfx.Module, fx.Populate(&g), fx.Supply(zap.New(core)),
				httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: u.URL, Prewarm: tt.give}),
				httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL + "/search/"}),
			}
			if u.TLS != nil {
				roots := x509.NewCertPool()
				roots.AddCert(u.Certificate())
				opts = append(opts, fx.Decorate(func(tr *http.Transport) *http.Transport { tr.TLSClientConfig.RootCAs = roots; return tr }))
			}
			app := fxtest.New(t, opts...)
			app.RequireStart()
			testutil.WaitFor(t, "the server sees the pre-warmed connections", func() bool { return u.Opened() == int64(tt.give) })
			testutil.WaitFor(t, "net/http keeps what it needs", func() bool { return u.Open() == tt.wantConns })
			// net/http pools a dialled connection a moment after its handshake, on its own
			// goroutine: give it that moment before the burst.
			time.Sleep(50 * time.Millisecond)
			if s := g.Stats.Snapshot(); s.ConnsOpen != tt.wantConns || served.Load() != 0 || s.Requests != 0 {
				t.Fatalf("after start: %d open, %d requests served; want %d open and none served", s.ConnsOpen, served.Load(), tt.wantConns)
			}
			opened := u.Opened()
			if s := g.Stats.Snapshot(); s.ConnsOpen != tt.wantConns {
				t.Fatalf("%d open, want %d", s.ConnsOpen, tt.wantConns)
			}
			var wg sync.WaitGroup
			for range tt.wantConns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					mustGet(t, g.Payments, "/")
				}()
			}
			wg.Wait()
			if now := u.Opened(); now != opened {
				t.Errorf("the first burst of %d opened %d connections, want none", tt.wantConns, now-opened)
			}
			app.RequireStop()
			u.RequireNoConns(t)
		})
	}
	t.Run("upstream down", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		core, logs := observer.New(zap.WarnLevel)
		var g upstreams
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&g), fx.Supply(zap.New(core)),
			httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "http://" + addr, Prewarm: 2}),
			httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: "http://" + addr}),
		)
		app.RequireStart()
		if n := logs.FilterMessageSnippet("pre-warm failed").Len(); n != 1 {
			t.Errorf("warnings %v, want one saying the pre-warm failed", logs.All())
		}
		app.RequireStop()
	})
}

// Pre-warming never fails start, nor takes all of it: an upstream that accepts connections
// and never completes the TLS handshake holds it for half of the start context at most.
func TestPrewarmLeavesStartTime(t *testing.T) {
	t.Parallel()
	addr := silentListener(t)
	core, logs := observer.New(zap.WarnLevel)
	app := fx.New(fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)),
		httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://" + addr, Prewarm: 2}))
	if err := app.Err(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	began := time.Now()
	err := app.Start(ctx)
	took := time.Since(began)
	stopCtx, cancelStop := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelStop()
	if stopErr := app.Stop(stopCtx); stopErr != nil {
		t.Errorf("stop: %v", stopErr)
	}
	if err != nil {
		t.Fatalf("start failed after %v because a pre-warm was slow: %v", took.Round(time.Millisecond), err)
	}
	if took > 800*time.Millisecond {
		t.Errorf("start took %v of its 1s: pre-warming should leave half of it", took.Round(time.Millisecond))
	}
	if n := logs.FilterMessageSnippet("pre-warm failed").Len(); n != 1 {
		t.Errorf("warnings %v, want one saying the pre-warm failed", logs.All())
	}
}

// An origin that a component called while the graph was built has a connection in the pool
// already: pre-warming leaves it alone, so that it sends nothing over it.
func TestPrewarmSendsNothingOverAPooledConnection(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
	}))
	core, logs := observer.New(zap.InfoLevel)
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)),
		httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: u.URL, Prewarm: 2}),
		fx.Invoke(fx.Annotate(func(c *http.Client) error {
			_, err := get(c, "token") // a component fetching a token while the graph is built
			return err
		}, fx.ParamTags(`name:"payments"`))))
	app.RequireStart()
	app.RequireStop()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != "GET /token" {
		t.Errorf("the upstream received %v, want only the component's GET /token", seen)
	}
	if logs.FilterMessageSnippet("pre-warm skipped").Len() != 1 {
		t.Errorf("logs %v, want one saying the pre-warm was skipped", logs.All())
	}
	u.RequireNoConns(t)
}
