package otelhttpfx_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/otelhttpfx"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// httpfxPoints returns the names of the httpfx.client.* metrics that have data points.
func httpfxPoints(m map[string]metricdata.Metrics) []string {
	var names []string
	for name, mt := range m {
		if !strings.HasPrefix(name, "httpfx.client.") || name == "httpfx.client.connections.retired" {
			continue // connections.retired is the Observer's own counter, not read from Stats
		}
		n := 0
		switch d := mt.Data.(type) {
		case metricdata.Sum[int64]:
			n = len(d.DataPoints)
		case metricdata.Gauge[int64]:
			n = len(d.DataPoints)
		}
		if n > 0 {
			names = append(names, name)
		}
	}
	return names
}

// When stop returns, the Module has unregistered the callback of its counters of Stats: a
// collection after stop has none of them, although Stats changed after stop. An app that
// fails at fx.New has registered nothing; one that fails at start, nothing that is left.
func TestStopUnregisters(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	errBoom := errors.New("boom")
	tests := []struct {
		give    string
		options fx.Option
		wantNew bool // fx.New fails
	}{
		{"stopped", fx.Options(), false},
		{"failed fx.New", fx.Invoke(func(*http.Client) error { return errBoom }), true},
		{"failed start", fx.Invoke(func(lc fx.Lifecycle, _ *http.Client) {
			lc.Append(fx.StartHook(func() error { return errBoom }))
		}), false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			sdk := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer sdk.Shutdown(context.Background())
			mp := &countingProvider{MeterProvider: sdk}
			var c *http.Client
			var stats *httpfx.Stats
			app := fx.New(fx.NopLogger, fx.Supply(fx.Annotate(mp, fx.As(new(metric.MeterProvider)))),
				httpfx.Module, otelhttpfx.Module, tt.options, fx.Populate(&c, &stats))
			if tt.wantNew {
				if err := app.Err(); !errors.Is(err, errBoom) {
					t.Fatalf("fx.New: %v, want %v", err, errBoom)
				}
				if n := mp.live(); n != 0 {
					t.Errorf("%d callbacks left registered by the failed app", n)
				}
				return
			}
			if err := app.Start(context.Background()); tt.give == "failed start" {
				if !errors.Is(err, errBoom) {
					t.Fatalf("start: %v, want %v", err, errBoom)
				}
				if n := mp.live(); n != 0 || mp.registered.Load() != 1 {
					t.Errorf("%d callbacks registered, %d left; want 1 and 0", mp.registered.Load(), n)
				}
				return
			} else if err != nil {
				t.Fatal(err)
			}
			if _, err := get(c, u.URL); err != nil {
				t.Fatal(err)
			}
			if got := httpfxPoints(collect(t, reader)); len(got) == 0 {
				t.Fatal("no httpfx.client.* metric while started: the test proves nothing")
			}
			if err := app.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := mp.live(); n != 0 || mp.registered.Load() != 1 {
				t.Errorf("%d callbacks registered, %d left after stop; want 1 and 0", mp.registered.Load(), n)
			}
			if _, err := get(c, u.URL); !errors.Is(err, httpfx.ErrClosed) || stats.Snapshot().Rejected != 1 {
				t.Fatalf("after stop: %v, want ErrClosed", err)
			}
			if got := httpfxPoints(collect(t, reader)); len(got) != 0 {
				t.Errorf("after stop the provider still reads %v from Stats", got)
			}
		})
	}
	u.RequireNoConns(t)
}

// point returns the value of metric name's data point with the attributes want ("k=v,...",
// all of them), and whether there is one.
func point(m map[string]metricdata.Metrics, name, want string) (int64, bool) {
	switch d := m[name].Data.(type) {
	case metricdata.Sum[int64]:
		for _, dp := range d.DataPoints {
			if attrs(dp.Attributes) == want {
				return dp.Value, true
			}
		}
	case metricdata.Gauge[int64]:
		for _, dp := range d.DataPoints {
			if attrs(dp.Attributes) == want {
				return dp.Value, true
			}
		}
	}
	return 0, false
}

// After a known load through the shared and upstream clients (a reset retried, retries the
// budget refuses, TLS handshakes full and resumed, a client certificate), every counter read
// from Stats equals the Snapshot, total and per upstream.
func TestStatsInstrumentsEqualSnapshot(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	flaky := testutil.NewServer(t, testutil.ResetFirst(t))
	tlsSrv := testutil.NewTLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), false)
	refused := testutil.ClosedURL(t)
	certFile, keyFile, notAfter := testutil.ClientCert(t)
	cfg := httpfx.DefaultConfig()
	cfg.TLSCAPEM = testutil.CertPEM(tlsSrv.Certificate())
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	cfg.Retry.BudgetPercent, cfg.Retry.BudgetPerSecond = 0, 1 // 10 retries per origin in 10s
	tel := newTelemetry(t)
	var g graph
	var down *http.Client
	app := fxtest.New(t, fx.NopLogger, tel.options(), fx.Replace(cfg), httpfx.Module, otelhttpfx.Module,
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: flaky.URL + "/"}),
		httpfx.Upstream("down", httpfx.UpstreamConfig{BaseURL: refused + "/"}),
		fx.Invoke(fx.Annotate(func(c *http.Client) { down = c }, fx.ParamTags(`name:"down"`))),
		populate(&g))
	app.RequireStart()

	if code, err := get(g.Search, "reset"); err != nil || code != 200 {
		t.Fatalf("GET of a reset: %d, %v; want the retry's 200", code, err)
	}
	for i := range 2 { // a full handshake, then one that resumes its session
		if code, err := get(g.Client, tlsSrv.URL); err != nil || code != 200 {
			t.Fatalf("GET over TLS: %d, %v", code, err)
		}
		if i == 0 {
			httpfx.CloseIdleConnections(g.Client)
		}
	}
	if _, err := get(g.Client, u.URL); err != nil {
		t.Fatal(err)
	}
	// The refused port's origin has a budget of 10 retries: the shared client's request takes
	// 2, the down upstream's the rest, until the budget refuses.
	if _, err := get(g.Client, refused); err == nil {
		t.Fatal("GET of a closed port succeeded")
	}
	for range 6 {
		if _, err := get(down, "x"); err == nil {
			t.Fatal("GET of a closed port succeeded")
		}
	}

	m := collect(t, tel.reader)
	s := g.Stats.Snapshot()
	tests := []struct {
		give, attrs string
		want        int64
	}{
		{"httpfx.client.connections.opened", "", s.ConnsOpened},
		{"httpfx.client.requests.cut", "", s.Cut},
		{"httpfx.client.requests.rejected", "", s.Rejected},
		{"httpfx.client.requests.replayed", "", s.Replayed},
		{"httpfx.client.requests.waiting", "", s.Waiting},
		{"httpfx.client.requests.retried", "", s.Retries},
		{"httpfx.client.requests.retry_budget_refused", "", s.BudgetRefused},
		{"httpfx.client.upstream.requests.retried", "httpfx.upstream=search", s.Upstreams["search"].Retries},
		{"httpfx.client.upstream.requests.retried", "httpfx.upstream=down", s.Upstreams["down"].Retries},
		{"httpfx.client.upstream.requests.retry_budget_refused", "httpfx.upstream=search", s.Upstreams["search"].BudgetRefused},
		{"httpfx.client.upstream.requests.retry_budget_refused", "httpfx.upstream=down", s.Upstreams["down"].BudgetRefused},
		{"httpfx.client.tls.handshakes", "tls.resumed=false", s.HandshakesFull},
		{"httpfx.client.tls.handshakes", "tls.resumed=true", s.HandshakesResumed},
		{"httpfx.client.tls.certificate.not_after", "", s.ClientCertNotAfter.Unix()},
	}
	for _, tt := range tests {
		if got, ok := point(m, tt.give, tt.attrs); !ok || got != tt.want {
			t.Errorf("%s{%s} = %d (found %v), want %d", tt.give, tt.attrs, got, ok, tt.want)
		}
	}
	if s.Retries != 1+10 || s.Upstreams["search"].Retries != 1 || s.BudgetRefused == 0 ||
		s.Upstreams["down"].BudgetRefused != s.BudgetRefused || s.HandshakesFull != 1 || s.HandshakesResumed != 1 ||
		!s.ClientCertNotAfter.Equal(notAfter) {
		t.Errorf("Stats %+v: the load is not what the test meant", s)
	}
	for _, name := range []string{"httpfx.client.requests.retried", "httpfx.client.tls.handshakes"} {
		if sum, ok := m[name].Data.(metricdata.Sum[int64]); !ok || !sum.IsMonotonic || m[name].Unit == "" {
			t.Errorf("%s: %+v, want a monotonic sum with a unit", name, m[name])
		}
	}
	if g, ok := m["httpfx.client.tls.certificate.not_after"]; !ok || g.Unit != "s" {
		t.Errorf("certificate.not_after: %+v, want a gauge in s", g)
	}
	app.RequireStop()
	u.RequireNoConns(t)
	flaky.RequireNoConns(t)
	tlsSrv.RequireNoConns(t)
}

// Without a client certificate, there is no expiry gauge.
func TestNoClientCertificateNoGauge(t *testing.T) {
	tel := newTelemetry(t)
	app := fxtest.New(t, fx.NopLogger, tel.options(), httpfx.Module, otelhttpfx.Module)
	app.RequireStart()
	if _, ok := point(collect(t, tel.reader), "httpfx.client.tls.certificate.not_after", ""); ok {
		t.Error("an expiry gauge without a client certificate")
	}
	app.RequireStop()
}
