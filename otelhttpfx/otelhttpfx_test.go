package otelhttpfx_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/otelhttpfx"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// telemetry is an SDK meter provider read by hand (and at each flush) and a tracer provider
// that records spans.
type telemetry struct {
	reader *flushReader
	spans  *tracetest.SpanRecorder
	mp     *sdkmetric.MeterProvider
	tp     *sdktrace.TracerProvider
}

func newTelemetry(t *testing.T) *telemetry {
	tel := &telemetry{reader: newFlushReader(), spans: tracetest.NewSpanRecorder()}
	tel.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	t.Cleanup(func() {
		tel.mp.Shutdown(context.Background())
		tel.tp.Shutdown(context.Background())
	})
	return tel
}

// options puts the providers in the graph, as an app's own would be.
func (tel *telemetry) options() fx.Option {
	return fx.Supply(
		fx.Annotate(tel.mp, fx.As(new(metric.MeterProvider))),
		fx.Annotate(tel.tp, fx.As(new(trace.TracerProvider))),
	)
}

// graph is what a test takes from the app.
type graph struct {
	Client    *http.Client
	Transport *http.Transport
	RT        http.RoundTripper
	Stats     *httpfx.Stats
	Search    *http.Client
}

func populate(g *graph) fx.Option {
	return fx.Options(
		fx.Populate(&g.Client, &g.Transport, &g.RT, &g.Stats),
		fx.Invoke(fx.Annotate(func(c *http.Client) { g.Search = c }, fx.ParamTags(`name:"search"`))),
	)
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

// After a known load through the shared and an upstream client, the reader sees the
// semantic-convention metrics with their attributes, counts and buckets, httpfx's counters
// equal Stats, and every request has a span, failed ones with an error status.
func TestMetricsAndSpansAfterKnownLoad(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/fail") {
			http.Error(w, "no", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	}))
	refused := testutil.ClosedURL(t)
	tel := newTelemetry(t)
	var g graph
	app := fxtest.New(t, fx.NopLogger, tel.options(),
		httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing,
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL + "/search/"}),
		populate(&g),
	)
	app.RequireStart()

	const shared, search, fails = 10, 5, 2
	for range shared {
		if code, err := get(g.Client, u.URL+"/ok"); err != nil || code != 200 {
			t.Fatalf("GET: %d, %v", code, err)
		}
	}
	for range search {
		if code, err := get(g.Search, "q"); err != nil || code != 200 {
			t.Fatalf("GET search: %d, %v", code, err)
		}
	}
	for range fails {
		if code, _ := get(g.Client, u.URL+"/fail"); code != 500 {
			t.Fatalf("GET /fail: %d, want 500", code)
		}
	}
	if _, err := get(g.Client, refused); err == nil {
		t.Fatal("GET of a closed port succeeded")
	}

	host, portStr, _ := net.SplitHostPort(u.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	_, refusedPortStr, _ := net.SplitHostPort(strings.TrimPrefix(refused, "http://"))
	refusedPort, _ := strconv.Atoi(refusedPortStr)
	ok := fmt.Sprintf("http.request.method=GET,http.response.status_code=200,network.protocol.version=1.1,server.address=%s,server.port=%d,url.scheme=http", host, port)
	failed := fmt.Sprintf("error.type=500,http.request.method=GET,http.response.status_code=500,network.protocol.version=1.1,server.address=%s,server.port=%d,url.scheme=http", host, port)
	viaSearch := strings.Replace(ok, "http.response.status_code=200,", "http.response.status_code=200,httpfx.upstream=search,", 1)
	noConn := fmt.Sprintf("error.type=connection,http.request.method=GET,server.address=%s,server.port=%d,url.scheme=http", host, refusedPort)
	wantDurations := map[string]uint64{ok: shared, failed: fails, viaSearch: search, noConn: 1}

	m := collect(t, tel.reader)
	dur, okType := m["http.client.request.duration"].Data.(metricdata.Histogram[float64])
	if !okType || m["http.client.request.duration"].Unit != "s" {
		t.Fatalf("http.client.request.duration: %+v, want a histogram in s", m["http.client.request.duration"])
	}
	got := map[string]uint64{}
	for _, dp := range dur.DataPoints {
		got[attrs(dp.Attributes)] += dp.Count
		if !slices.Equal(dp.Bounds, []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}) {
			t.Errorf("bucket boundaries %v, want the semantic conventions'", dp.Bounds)
		}
	}
	for k, want := range wantDurations {
		if got[k] != want {
			t.Errorf("request.duration{%s} count = %d, want %d", k, got[k], want)
		}
	}
	if len(got) != len(wantDurations) {
		t.Errorf("request.duration series %v, want %v", got, wantDurations)
	}

	// No request is active; every connection is idle, as Stats says.
	s := g.Stats.Snapshot()
	active := m["http.client.active_requests"].Data.(metricdata.Sum[int64])
	for _, dp := range active.DataPoints {
		if dp.Value != 0 {
			t.Errorf("active_requests{%s} = %d, want 0", attrs(dp.Attributes), dp.Value)
		}
		if v, _ := dp.Attributes.Value("server.address"); v.AsString() != host {
			t.Errorf("active_requests attributes %s, want server.address %s", attrs(dp.Attributes), host)
		}
	}
	if active.IsMonotonic || m["http.client.active_requests"].Unit != "{request}" {
		t.Errorf("active_requests is monotonic or has unit %q", m["http.client.active_requests"].Unit)
	}
	states := map[string]int64{}
	for _, dp := range m["http.client.open_connections"].Data.(metricdata.Sum[int64]).DataPoints {
		st, _ := dp.Attributes.Value("http.connection.state")
		states[st.AsString()] += dp.Value
		if v, _ := dp.Attributes.Value("server.port"); v.AsInt64() != int64(port) {
			t.Errorf("open_connections attributes %s, want server.port %d", attrs(dp.Attributes), port)
		}
		if v, _ := dp.Attributes.Value("network.peer.address"); v.AsString() != "127.0.0.1" {
			t.Errorf("open_connections attributes %s, want network.peer.address 127.0.0.1", attrs(dp.Attributes))
		}
	}
	if states["idle"] != s.ConnsOpen || states["active"] != 0 || s.ConnsIdle != s.ConnsOpen || s.ConnsOpen < 1 {
		t.Errorf("open_connections %v, Stats %+v: want every open connection idle", states, s)
	}
	if v := sumInt(m, "httpfx.client.connections.opened"); v != s.ConnsOpened {
		t.Errorf("httpfx.client.connections.opened = %d, Stats.ConnsOpened = %d", v, s.ConnsOpened)
	}

	// Spans: one per request sent, an error status for the 500s and the refused connection,
	// which is sent three times (Config.Retry's default), the resends numbered.
	spans := tel.spans.Ended()
	const refusedSends = 3
	if len(spans) != shared+search+fails+refusedSends || s.Retries != refusedSends-1 {
		t.Fatalf("%d spans, %d retries; want %d and %d", len(spans), s.Retries, shared+search+fails+refusedSends, refusedSends-1)
	}
	status := map[codes.Code]int{}
	var resends []int64
	for _, sp := range spans {
		status[sp.Status().Code]++
		if sp.SpanKind() != trace.SpanKindClient || sp.Name() != "GET" {
			t.Errorf("span %q is %v, want a client span named GET", sp.Name(), sp.SpanKind())
		}
		for _, kv := range sp.Attributes() {
			if kv.Key == "http.request.resend_count" {
				resends = append(resends, kv.Value.AsInt64())
			}
		}
	}
	if status[codes.Error] != fails+refusedSends || status[codes.Unset] != shared+search {
		t.Errorf("span statuses %v, want %d errors and %d unset", status, fails+refusedSends, shared+search)
	}
	if !slices.Equal(resends, []int64{1, 2}) {
		t.Errorf("resend counts %v, want [1 2]: the refused request's resends", resends)
	}

	// Stop: every connection closes; the provider is flushed before the counters of Stats
	// are unregistered.
	app.RequireStop()
	s = g.Stats.Snapshot()
	flushes, m := tel.reader.lastFlush()
	if flushes != 1 {
		t.Fatalf("%d flushes at stop, want 1", flushes)
	}
	if v := sumInt(m, "httpfx.client.requests.cut"); v != 0 {
		t.Errorf("cut = %d, want 0", v)
	}
	if v := sumInt(m, "httpfx.client.connections.opened"); v != s.ConnsOpened {
		t.Errorf("connections.opened flushed at stop = %d, want %d", v, s.ConnsOpened)
	}
	m = collect(t, tel.reader)
	var closed uint64
	for _, dp := range m["http.client.connection.duration"].Data.(metricdata.Histogram[float64]).DataPoints {
		closed += dp.Count
		if dp.Bounds[0] != 0.01 || dp.Bounds[len(dp.Bounds)-1] != 300 {
			t.Errorf("connection.duration buckets %v, want 10 ms to 300 s", dp.Bounds)
		}
	}
	if int64(closed) != s.ConnsOpened {
		t.Errorf("connection.duration count %d, want every connection opened (%d)", closed, s.ConnsOpened)
	}
	for _, dp := range m["http.client.open_connections"].Data.(metricdata.Sum[int64]).DataPoints {
		if dp.Value != 0 {
			t.Errorf("open_connections{%s} = %d after stop, want 0", attrs(dp.Attributes), dp.Value)
		}
	}
	u.RequireNoConns(t)
}

// sumInt adds up the points of an int64 sum.
func sumInt(m map[string]metricdata.Metrics, name string) int64 {
	var v int64
	sum, _ := m[name].Data.(metricdata.Sum[int64])
	for _, dp := range sum.DataPoints {
		v += dp.Value
	}
	return v
}

// With the traced round tripper in place, stop still gates, drains bodies in flight, closes
// the owned transport (otelhttp's has no CloseIdleConnections) and, past the bound, cuts.
func TestStopWithTracing(t *testing.T) {
	t.Run("drain", func(t *testing.T) {
		release := testutil.NewGate()
		defer release.Release()
		u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "first ")
			w.(http.Flusher).Flush()
			release.Wait()
			io.WriteString(w, "last")
		}))
		tel := newTelemetry(t)
		var g graph
		app := fxtest.New(t, fx.NopLogger, tel.options(), httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing,
			httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}), populate(&g))
		app.RequireStart()
		if _, ok := g.RT.(*http.Transport); ok {
			t.Fatal("the round tripper is the transport: Tracing wrapped nothing")
		}
		resp, err := g.Client.Get(u.URL)
		if err != nil {
			t.Fatal(err)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- app.Stop(context.Background()) }()
		refused := testutil.ClosedURL(t)
		testutil.WaitFor(t, "stop closes the gate", func() bool {
			_, err := get(g.Search, refused) // fails at once either way, with ErrClosed once stopped
			return errors.Is(err, httpfx.ErrClosed)
		})
		select {
		case err := <-stopped:
			t.Fatalf("stop returned (%v) with a body in flight", err)
		case <-time.After(50 * time.Millisecond):
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
		if s := g.Stats.Snapshot(); s.InFlight != 0 || s.ConnsOpen != 0 || s.Cut != 0 {
			t.Errorf("after stop %+v, want nothing in flight, open or cut", s)
		}
		var drained int
		for _, sp := range tel.spans.Ended() {
			if sp.Status().Code != codes.Error { // the probes to a closed port before the gate failed
				drained++
			}
		}
		if drained != 1 {
			t.Errorf("%d spans of the drained request ended, want 1 (refused requests have none)", drained)
		}
		u.RequireNoConns(t)
	})
	t.Run("cut", func(t *testing.T) {
		hang := testutil.NewGate()
		defer hang.Release()
		u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush()
			hang.Wait()
		}))
		tel := newTelemetry(t)
		var g graph
		cfg := httpfx.DefaultConfig()
		cfg.DrainTimeout = 100 * time.Millisecond
		app := fxtest.New(t, fx.NopLogger, tel.options(), fx.Replace(cfg), httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing,
			httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}), populate(&g))
		app.RequireStart()
		resp, err := g.Client.Get(u.URL) // never read nor closed before stop
		if err != nil {
			t.Fatal(err)
		}
		if err := app.Stop(context.Background()); err == nil || !strings.Contains(err.Error(), "cut 1") {
			t.Fatalf("stop: %v, want 1 cut", err)
		}
		resp.Body.Close()
		_, flushed := tel.reader.lastFlush() // the flush at stop, after the drain
		if v := sumInt(flushed, "httpfx.client.requests.cut"); v != 1 {
			t.Errorf("httpfx.client.requests.cut = %d, want 1", v)
		}
		m := collect(t, tel.reader)
		var closedErr uint64
		for _, dp := range m["http.client.request.duration"].Data.(metricdata.Histogram[float64]).DataPoints {
			if v, _ := dp.Attributes.Value("error.type"); v.AsString() == "closed" {
				closedErr += dp.Count
			}
		}
		if closedErr != 1 {
			t.Errorf("%d requests recorded with error.type closed, want 1", closedErr)
		}
		if n := len(tel.spans.Ended()); n != 1 {
			t.Errorf("%d spans ended, want the cut request's", n)
		}
		hang.Release()
		u.RequireNoConns(t)
	})
}

// The owner's flush, httpfx.CloseIdleConnections, reaches the owned transport through
// otelhttp's wrapper, which has no such method; a consumer's CloseIdleConnections on the
// shared client is ignored and counted.
func TestCloseIdleThroughTracing(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	tel := newTelemetry(t)
	var g graph
	app := fxtest.New(t, fx.NopLogger, tel.options(), httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing,
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}), populate(&g))
	app.RequireStart()
	if _, err := get(g.Client, u.URL); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.RT.(interface{ CloseIdleConnections() }); ok {
		t.Fatalf("%T has CloseIdleConnections: the test proves nothing", g.RT)
	}
	g.Client.CloseIdleConnections()
	if s := g.Stats.Snapshot(); s.CloseIdleIgnored != 1 || u.Open() != 1 {
		t.Errorf("a consumer's CloseIdleConnections: ignored %d, server sees %d open; want 1 and 1", s.CloseIdleIgnored, u.Open())
	}
	if err := httpfx.CloseIdleConnections(g.Client); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the idle connection closes", func() bool { return u.Open() == 0 })
	app.RequireStop()
	u.RequireNoConns(t)
}

// Without providers in the graph, the module and Tracing use the global ones.
func TestGlobalProviders(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing,
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}), populate(&g))
	app.RequireStart()
	if _, err := get(g.Client, u.URL); err != nil {
		t.Fatal(err)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// Without fx: NewObserver goes in Params.Observers, ObserveStats reads the Stats New returns,
// and the caller unregisters it after Shutdown.
func TestWithoutFx(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	tel := newTelemetry(t)
	obs, err := otelhttpfx.NewObserver(tel.mp)
	if err != nil {
		t.Fatal(err)
	}
	res, err := httpfx.New(httpfx.Params{Config: httpfx.DefaultConfig(), Observers: []httpfx.Observer{obs}})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := obs.ObserveStats(res.Stats)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := get(res.Client, u.URL); err != nil {
			t.Fatal(err)
		}
	}
	m := collect(t, tel.reader)
	var n uint64
	for _, dp := range m["http.client.request.duration"].Data.(metricdata.Histogram[float64]).DataPoints {
		n += dp.Count
	}
	if n != 3 || sumInt(m, "httpfx.client.connections.opened") != 1 {
		t.Errorf("%d requests and %d connections recorded, want 3 and 1", n, sumInt(m, "httpfx.client.connections.opened"))
	}
	if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
		t.Fatal(err)
	}
	if err := reg.Unregister(); err != nil { // the caller's: after Shutdown, so that it saw stop
		t.Fatal(err)
	}
	if got := httpfxPoints(collect(t, tel.reader)); len(got) != 0 {
		t.Errorf("after Unregister the provider still reads %v from Stats", got)
	}
	u.RequireNoConns(t)
}
