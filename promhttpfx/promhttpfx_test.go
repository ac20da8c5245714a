package promhttpfx_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/promhttpfx"
	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// graph is what a test takes from the app.
type graph struct {
	Client *http.Client
	Stats  *httpfx.Stats
	Search *http.Client
}

func populate(g *graph) fx.Option {
	return fx.Options(
		fx.Populate(&g.Client, &g.Stats),
		fx.Invoke(fx.Annotate(func(c *http.Client) { g.Search = c }, fx.ParamTags(`name:"search"`))),
	)
}

// withRegistry puts reg in the graph as the app's prometheus.Registerer.
func withRegistry(reg *prometheus.Registry) fx.Option {
	return fx.Supply(fx.Annotate(reg, fx.As(new(prometheus.Registerer))))
}

// get sends a GET through c and reads the whole body.
func get(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return resp.StatusCode, err
}

// gather returns the registry's metric families by name.
func gather(t testing.TB, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value returns the value of the metric of family name whose labels are labels ("k", "v",
// ...), and whether there is one.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	for _, m := range mfs[name].GetMetric() {
		match := true
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// After a known load through the shared and upstream clients (successes, 404s, a refused
// port, a reset retried, retries the budget refuses, TLS handshakes full and resumed, a client
// certificate), the registry gathers values equal to Stats and the request durations by
// label, and the linter finds nothing.
func TestRegistryEqualsStats(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/missing") {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "ok")
	}))
	flaky := testutil.NewServer(t, testutil.ResetFirst(t)) // a new connection, so that net/http does not retry it itself
	tlsSrv := testutil.NewTLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), false)
	refused := testutil.ClosedURL(t)
	certFile, keyFile, notAfter := testutil.ClientCert(t)
	cfg := httpfx.DefaultConfig()
	cfg.TLSCAPEM = testutil.CertPEM(tlsSrv.Certificate())
	cfg.TLSCertFile, cfg.TLSKeyFile = certFile, keyFile
	cfg.Retry.BudgetPercent, cfg.Retry.BudgetPerSecond = 0, 1 // 10 retries per origin in 10s
	reg := prometheus.NewRegistry()
	var g graph
	var down *http.Client
	app := fxtest.New(t, fx.NopLogger, withRegistry(reg), fx.Replace(cfg), httpfx.Module, promhttpfx.Module,
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL + "/search/"}),
		httpfx.Upstream("down", httpfx.UpstreamConfig{BaseURL: refused + "/"}),
		fx.Invoke(fx.Annotate(func(c *http.Client) { down = c }, fx.ParamTags(`name:"down"`))),
		populate(&g))
	app.RequireStart()

	const shared, search, missing, secure, downs = 10, 5, 2, 2, 6
	for range shared {
		if code, err := get(g.Client, u.URL); err != nil || code != 200 {
			t.Fatalf("GET: %d, %v", code, err)
		}
	}
	for range search {
		if code, err := get(g.Search, "q"); err != nil || code != 200 {
			t.Fatalf("GET search: %d, %v", code, err)
		}
	}
	for range missing {
		if code, _ := get(g.Search, "missing"); code != 404 {
			t.Fatalf("GET missing: %d, want 404", code)
		}
	}
	if code, err := get(g.Client, flaky.URL); err != nil || code != 200 {
		t.Fatalf("GET of a reset: %d, %v; want the retry's 200", code, err)
	}
	for i := range secure { // a full handshake, then one that resumes its session
		if code, err := get(g.Client, tlsSrv.URL); err != nil || code != 200 {
			t.Fatalf("GET over TLS: %d, %v", code, err)
		}
		if i == 0 {
			httpfx.CloseIdleConnections(g.Client)
		}
	}
	// The refused port's origin has a budget of 10 retries: the shared client's request takes
	// 2, the down upstream's the rest, until the budget refuses.
	if _, err := get(g.Client, refused); err == nil {
		t.Fatal("GET of a closed port succeeded")
	}
	for range downs {
		if _, err := get(down, "x"); err == nil {
			t.Fatal("GET of a closed port succeeded")
		}
	}

	mfs := gather(t, reg)
	s := g.Stats.Snapshot()
	tests := []struct {
		give   string
		labels []string
		want   int64
	}{
		{"httpfx_requests_total", nil, s.Requests},
		{"httpfx_requests_in_flight", nil, s.InFlight},
		{"httpfx_requests_failed_total", nil, s.Failed},
		{"httpfx_requests_rejected_total", nil, s.Rejected},
		{"httpfx_requests_cut_total", nil, s.Cut},
		{"httpfx_requests_waiting", nil, s.Waiting},
		{"httpfx_requests_replayed_total", nil, s.Replayed},
		{"httpfx_retries_total", nil, s.Retries},
		{"httpfx_retries_budget_refused_total", nil, s.BudgetRefused},
		{"httpfx_connections_opened_total", nil, s.ConnsOpened},
		{"httpfx_connections_open", nil, s.ConnsOpen},
		{"httpfx_connections_idle", nil, s.ConnsIdle},
		{"httpfx_connections_in_use", nil, s.ConnsInUse},
		{"httpfx_connections_retired_total", []string{"reason", httpfx.RetiredIdle}, s.ConnsRetired[httpfx.RetiredIdle]},
		{"httpfx_close_idle_ignored_total", nil, s.CloseIdleIgnored},
		{"httpfx_tls_handshakes_total", []string{"resumed", "false"}, s.HandshakesFull},
		{"httpfx_tls_handshakes_total", []string{"resumed", "true"}, s.HandshakesResumed},
		{"httpfx_client_certificate_expiration_timestamp_seconds", nil, s.ClientCertNotAfter.Unix()},
		{"httpfx_upstream_requests_total", []string{"upstream", "search"}, s.Upstreams["search"].Requests},
		{"httpfx_upstream_requests_in_flight", []string{"upstream", "search"}, s.Upstreams["search"].InFlight},
		{"httpfx_upstream_requests_failed_total", []string{"upstream", "search"}, s.Upstreams["search"].Failed},
		{"httpfx_upstream_requests_waiting", []string{"upstream", "search"}, s.Upstreams["search"].Waiting},
		{"httpfx_upstream_retries_total", []string{"upstream", "search"}, s.Upstreams["search"].Retries},
		{"httpfx_upstream_retries_budget_refused_total", []string{"upstream", "search"}, s.Upstreams["search"].BudgetRefused},
		{"httpfx_upstream_requests_total", []string{"upstream", "down"}, s.Upstreams["down"].Requests},
		{"httpfx_upstream_requests_failed_total", []string{"upstream", "down"}, s.Upstreams["down"].Failed},
		{"httpfx_upstream_retries_total", []string{"upstream", "down"}, s.Upstreams["down"].Retries},
		{"httpfx_upstream_retries_budget_refused_total", []string{"upstream", "down"}, s.Upstreams["down"].BudgetRefused},
		{"httpfx_request_duration_seconds", []string{"upstream", "", "method", "GET", "code", "200", "error", ""}, shared + secure + 1},
		{"httpfx_request_duration_seconds", []string{"upstream", "search", "code", "200"}, search},
		{"httpfx_request_duration_seconds", []string{"upstream", "search", "code", "404"}, missing},
		{"httpfx_request_duration_seconds", []string{"upstream", "", "code", "", "error", "connection"}, 1},
		{"httpfx_request_duration_seconds", []string{"upstream", "down", "code", "", "error", "connection"}, downs},
	}
	for _, tt := range tests {
		got, ok := value(mfs, tt.give, tt.labels...)
		if !ok || got != float64(tt.want) {
			t.Errorf("%s%v = %v (found %v), want %d", tt.give, tt.labels, got, ok, tt.want)
		}
	}
	if s.Requests != shared+search+missing+1+secure+1+downs || s.Failed != 1+downs || s.ConnsIdle != s.ConnsOpen ||
		s.Upstreams["search"].Retries != 0 || s.Retries != 1+10 || s.BudgetRefused == 0 ||
		s.Upstreams["down"].BudgetRefused != s.BudgetRefused || s.HandshakesFull != 1 || s.HandshakesResumed != 1 ||
		!s.ClientCertNotAfter.Equal(notAfter) {
		t.Errorf("Stats %+v: the load is not what the test meant", s)
	}
	problems, err := promtest.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	app.RequireStop()
	if n := len(gather(t, reg)); n != 0 {
		t.Errorf("%d metric families left after stop, want the collector unregistered", n)
	}
	u.RequireNoConns(t)
	flaky.RequireNoConns(t)
	tlsSrv.RequireNoConns(t)
}

// Without a Registerer in the graph, the Module registers on prometheus.DefaultRegisterer
// and unregisters at stop, so that the app can be built again; a second registration on one
// registry fails start, and leaves the first in place.
func TestRegisterers(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	for i := range 2 {
		var c *http.Client
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, promhttpfx.Module, fx.Populate(&c))
		app.RequireStart()
		if _, err := get(c, u.URL); err != nil {
			t.Fatal(err)
		}
		if v, ok := value(gather(t, prometheus.DefaultGatherer), "httpfx_requests_total"); !ok || v != 1 {
			t.Errorf("app %d: default registry has httpfx_requests_total = %v (%v), want 1", i, v, ok)
		}
		app.RequireStop()
		if _, ok := gather(t, prometheus.DefaultGatherer)["httpfx_requests_total"]; ok {
			t.Errorf("app %d: still registered on the default registry after stop", i)
		}
	}

	reg := prometheus.NewRegistry()
	first := fxtest.New(t, fx.NopLogger, withRegistry(reg), httpfx.Module, promhttpfx.Module)
	first.RequireStart()
	second := fx.New(fx.NopLogger, withRegistry(reg), httpfx.Module, promhttpfx.Module)
	if err := second.Err(); err != nil {
		t.Fatalf("fx.New of the second app: %v, want nothing registered before start", err)
	}
	err := second.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "promhttpfx: register: ") ||
		!strings.Contains(err.Error(), "same prometheus.Registerer") {
		t.Errorf("second registration: %v, want a promhttpfx: register error naming the registerer", err)
	}
	if _, ok := value(gather(t, reg), "httpfx_requests_total"); !ok {
		t.Error("the second app's failed start unregistered the first app's collector")
	}
	first.RequireStop()
	if left := httpfxFamilies(t, reg); len(left) != 0 {
		t.Errorf("after stop %v are still registered", left)
	}
	u.RequireNoConns(t)
}

// With the module in the graph, stop still drains a body in flight, scrapes see it until
// httpfx has stopped, and requests after stop fail with ErrClosed.
func TestDrainWithModule(t *testing.T) {
	release := testutil.NewGate()
	defer release.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first ")
		w.(http.Flusher).Flush()
		release.Wait()
		io.WriteString(w, "last")
	}))
	reg := prometheus.NewRegistry()
	var g graph
	app := fxtest.New(t, fx.NopLogger, withRegistry(reg), httpfx.Module, promhttpfx.Module,
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}), populate(&g))
	app.RequireStart()
	resp, err := g.Client.Get(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	refused := testutil.ClosedURL(t)
	testutil.WaitFor(t, "stop closes the gate", func() bool {
		_, err := get(g.Search, refused)
		return errors.Is(err, httpfx.ErrClosed)
	})
	// The first probes may have been admitted, and refused only while waiting to be sent
	// again (a refused dial is retried); this one the closed gate refuses.
	if _, err := get(g.Search, refused); !errors.Is(err, httpfx.ErrClosed) {
		t.Fatalf("a request after stop began: %v, want ErrClosed", err)
	}
	if v, _ := value(gather(t, reg), "httpfx_requests_in_flight"); v != 1 {
		t.Errorf("in flight during the drain = %v, want 1", v)
	}
	release.Release()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "first last" {
		t.Fatalf("drained body %q, %v; want it whole", b, err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
	if s := g.Stats.Snapshot(); s.InFlight != 0 || s.ConnsOpen != 0 || s.Rejected == 0 {
		t.Errorf("after stop %+v, want nothing in flight or open, and the probes rejected", s)
	}
	u.RequireNoConns(t)
}

// Without fx: the Observer goes to httpfx.New, the Collector reads the Stats it returns; a
// request cut at stop shows in the cut counter and the histogram.
func TestWithoutFx(t *testing.T) {
	hang := testutil.NewGate()
	defer hang.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		hang.Wait()
	}))
	obs := promhttpfx.NewObserver()
	cfg := httpfx.DefaultConfig()
	cfg.DrainTimeout = 100 * time.Millisecond
	res, err := httpfx.New(httpfx.Params{Config: cfg, Observers: []httpfx.Observer{obs}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(promhttpfx.NewCollector(res.Stats, obs))
	resp, err := res.Client.Get(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := httpfx.Shutdown(context.Background(), res.Client); err == nil {
		t.Fatal("stop: no error, want 1 cut")
	}
	mfs := gather(t, reg)
	if v, _ := value(mfs, "httpfx_requests_cut_total"); v != 1 {
		t.Errorf("httpfx_requests_cut_total = %v, want 1", v)
	}
	if v, _ := value(mfs, "httpfx_request_duration_seconds", "code", "200", "error", "closed"); v != 1 {
		t.Errorf("cut requests in the histogram = %v, want 1", v)
	}
	var closed float64
	for _, m := range mfs["httpfx_connections_closed_total"].GetMetric() {
		closed += m.GetCounter().GetValue()
	}
	if closed != 1 {
		t.Errorf("httpfx_connections_closed_total = %v, want 1", closed)
	}
	hang.Release()
	u.RequireNoConns(t)
}

// httpfxFamilies returns the names of the httpfx_ families g gathers.
func httpfxFamilies(t testing.TB, g prometheus.Gatherer) []string {
	t.Helper()
	var names []string
	for name := range gather(t, g) {
		if strings.HasPrefix(name, "httpfx_") {
			names = append(names, name)
		}
	}
	return names
}

// An app that fails, at fx.New or at start, leaves nothing registered: a second app on the
// same registry (the graph's, or prometheus.DefaultRegisterer) registers, serves and
// unregisters at stop.
func TestFailedAppLeavesNothingRegistered(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	errBoom := errors.New("boom")
	reg := prometheus.NewRegistry()
	registries := []struct {
		give    string
		options fx.Option
		gather  prometheus.Gatherer
	}{
		{"graph", withRegistry(reg), reg},
		{"default", fx.Options(), prometheus.DefaultGatherer},
	}
	failures := []struct {
		give    string
		options fx.Option
		atStart bool
	}{
		{"invoke", fx.Invoke(func(*http.Client) error { return errBoom }), false},
		{"start hook", fx.Invoke(func(lc fx.Lifecycle, _ *http.Client) {
			lc.Append(fx.StartHook(func() error { return errBoom }))
		}), true},
	}
	for _, r := range registries {
		for _, f := range failures {
			t.Run(r.give+"/"+f.give, func(t *testing.T) {
				failed := fx.New(fx.NopLogger, r.options, httpfx.Module, promhttpfx.Module, f.options)
				err := failed.Err()
				if f.atStart {
					if err != nil {
						t.Fatalf("fx.New: %v", err)
					}
					err = failed.Start(context.Background())
				}
				if !errors.Is(err, errBoom) {
					t.Fatalf("failed app: %v, want %v", err, errBoom)
				}
				if left := httpfxFamilies(t, r.gather); len(left) != 0 {
					t.Fatalf("the failed app left %v registered", left)
				}

				var c *http.Client
				app := fxtest.New(t, fx.NopLogger, r.options, httpfx.Module, promhttpfx.Module, fx.Populate(&c))
				app.RequireStart()
				if _, err := get(c, u.URL); err != nil {
					t.Fatal(err)
				}
				if v, ok := value(gather(t, r.gather), "httpfx_requests_total"); !ok || v != 1 {
					t.Errorf("the second app: httpfx_requests_total = %v (%v), want 1", v, ok)
				}
				app.RequireStop()
				if left := httpfxFamilies(t, r.gather); len(left) != 0 {
					t.Errorf("after stop %v are still registered", left)
				}
			})
		}
	}
	u.RequireNoConns(t)
}
