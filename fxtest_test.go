package httpfx_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
}

// get sends a GET through c and reads the whole body.
func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func mustGet(t testing.TB, c *http.Client, url string) string {
	t.Helper()
	s, err := get(c, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return s
}

// mustDo sends req through c and returns the whole body.
func mustDo(t testing.TB, c *http.Client, req *http.Request) string {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// graph is what a test takes from the app.
type graph struct {
	Client    *http.Client
	Transport *http.Transport
	RT        http.RoundTripper
	Stats     *httpfx.Stats
	Config    httpfx.Config
}

func populate(g *graph) fx.Option {
	return fx.Populate(&g.Client, &g.Transport, &g.RT, &g.Stats, &g.Config)
}

func TestZeroConfigStartStop(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()

	if got := mustGet(t, g.Client, u.URL); got != "ok" {
		t.Fatalf("body = %q, want ok", got)
	}
	if g.RT != http.RoundTripper(g.Transport) {
		t.Errorf("RoundTripper is %T, want the owned *http.Transport", g.RT)
	}
	if g.Client.Timeout != 0 {
		t.Errorf("Client.Timeout = %v, want 0: httpfx enforces Config.Timeout itself", g.Client.Timeout)
	}
	want := httpfx.DefaultConfig()
	if !reflect.DeepEqual(g.Config, want) {
		t.Errorf("Config = %+v, want DefaultConfig", g.Config)
	}
	if g.Transport.MaxIdleConnsPerHost != want.MaxIdleConnsPerHost || g.Transport.MaxConnsPerHost != want.MaxConnsPerHost {
		t.Errorf("transport pool = %d idle / %d max per host, want %d / %d",
			g.Transport.MaxIdleConnsPerHost, g.Transport.MaxConnsPerHost, want.MaxIdleConnsPerHost, want.MaxConnsPerHost)
	}
	if g.Transport == http.DefaultTransport {
		t.Fatal("the owned transport is http.DefaultTransport")
	}

	app.RequireStop()
	s := g.Stats.Snapshot()
	if s.Requests != 1 || s.InFlight != 0 || s.ConnsOpened != 1 || s.ConnsOpen != 0 || s.Cut != 0 {
		t.Errorf("stats after stop = %+v, want 1 request, 1 connection opened, none open, none cut", s)
	}
	u.RequireNoConns(t)
}

func TestOneClientSharedByConsumers(t *testing.T) {
	t.Parallel()
	type consumer struct{ c *http.Client }
	var a, b consumer
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		fx.Provide(
			fx.Annotate(func(c *http.Client) *consumer { return &consumer{c} }, fx.ResultTags(`name:"a"`)),
			fx.Annotate(func(c *http.Client) *consumer { return &consumer{c} }, fx.ResultTags(`name:"b"`)),
		),
		fx.Invoke(fx.Annotate(func(x, y *consumer) { a, b = *x, *y }, fx.ParamTags(`name:"a"`, `name:"b"`))),
	)
	defer app.RequireStart().RequireStop()
	if a.c == nil || a.c != b.c {
		t.Fatalf("consumers got %p and %p, want one shared client", a.c, b.c)
	}
}

func TestRequestsAfterStopFailWithErrClosed(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()
	mustGet(t, g.Client, u.URL)
	app.RequireStop()

	served := u.Opened()
	body := &closeCounter{Reader: strings.NewReader("payload")}
	req, _ := http.NewRequest(http.MethodPost, u.URL, body)
	start := time.Now()
	_, err := g.Client.Do(req)
	if !errors.Is(err, httpfx.ErrClosed) {
		t.Fatalf("request after stop: err = %v, want ErrClosed", err)
	}
	if time.Since(start) > 5*time.Second { // a bound against hanging, not a timing goal
		t.Errorf("request after stop took %v, want it refused at once", time.Since(start))
	}
	if body.closed.Load() != 1 {
		t.Errorf("request body closed %d times, want 1 (a RoundTripper must close it)", body.closed.Load())
	}
	if u.Opened() != served {
		t.Error("a request after stop reached the server")
	}
	if s := g.Stats.Snapshot(); s.Rejected != 1 || s.Requests != 1 {
		t.Errorf("stats = %+v, want 1 request and 1 rejected", s)
	}
	u.RequireNoConns(t)
}

// gateClosed sends one request and reports whether it was refused with ErrClosed.
func gateClosed(c *http.Client, url string) bool {
	_, err := get(c, url)
	return errors.Is(err, httpfx.ErrClosed)
}

type closeCounter struct {
	io.Reader
	closed atomic.Int64
}

func (c *closeCounter) Close() error { c.closed.Add(1); return nil }

// A component that depends on the client is stopped before the client drains, so its own
// OnStop can still send requests.
func TestDependentOnStopCanUseClient(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	var stopErr error
	var stopBody string
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		fx.Invoke(func(lc fx.Lifecycle, c *http.Client) {
			lc.Append(fx.StopHook(func() { stopBody, stopErr = get(c, u.URL) }))
		}),
	)
	app.RequireStart().RequireStop()
	if stopErr != nil || stopBody != "ok" {
		t.Fatalf("dependent's OnStop request: body %q, err %v; want ok", stopBody, stopErr)
	}
	u.RequireNoConns(t)
}

func TestBadConfigFailsFxNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give httpfx.Config
		want []string
	}{
		{"negative timeout", func() httpfx.Config { c := httpfx.DefaultConfig(); c.Timeout = -time.Second; return c }(),
			[]string{"httpfx: config: Timeout is -1s"}},
		{"contradictory pool", func() httpfx.Config { c := httpfx.DefaultConfig(); c.MaxIdleConns = 10; return c }(),
			[]string{"MaxIdleConnsPerHost (512) exceeds MaxIdleConns (10)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := fx.New(fx.NopLogger, httpfx.Module, fx.Replace(tt.give))
			err := app.Err()
			if err == nil {
				t.Fatal("fx.New succeeded, want the config error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoggerNamedAndOptional(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.DebugLevel)
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)))
	app.RequireStart().RequireStop()
	if logs.Len() == 0 {
		t.Fatal("no log entries with a logger in the graph")
	}
	var msgs []string
	for _, e := range logs.All() {
		if e.LoggerName != "httpfx" {
			t.Errorf("entry %q logged by %q, want httpfx", e.Message, e.LoggerName)
		}
		msgs = append(msgs, e.Message)
	}
	joined := strings.Join(msgs, "\n")
	for _, want := range []string{"httpfx client ready", "httpfx client stopped"} {
		if !strings.Contains(joined, want) {
			t.Errorf("logs %q lack %q", joined, want)
		}
	}
}

// The six ways to change what the module provides with fx.Decorate and fx.Replace.
func TestDecorateTransportInPlace(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		fx.Decorate(func(tr *http.Transport) *http.Transport {
			tr.MaxIdleConnsPerHost = 7
			return tr
		}),
	)
	app.RequireStart()
	mustGet(t, g.Client, u.URL)
	if g.Transport.MaxIdleConnsPerHost != 7 {
		t.Errorf("MaxIdleConnsPerHost = %d, want the decorated 7", g.Transport.MaxIdleConnsPerHost)
	}
	if g.RT != http.RoundTripper(g.Transport) {
		t.Error("the round tripper is not the decorated transport")
	}
	if s := g.Stats.Snapshot(); s.ConnsOpened != 1 {
		t.Errorf("ConnsOpened = %d, want 1: the adjusted transport is still owned and counted", s.ConnsOpened)
	}
	app.RequireStop()
	u.RequireNoConns(t) // The owned transport was closed.
}

// plainWrapper wraps a RoundTripper and, like most wrappers, has no CloseIdleConnections.
type plainWrapper struct {
	next  http.RoundTripper
	calls atomic.Int64
}

func (w *plainWrapper) RoundTrip(r *http.Request) (*http.Response, error) {
	w.calls.Add(1)
	return w.next.RoundTrip(r)
}

func TestDecorateWrapRoundTripper(t *testing.T) {
	release := testutil.NewGate()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("head-"))
		w.(http.Flusher).Flush()
		if r.URL.Path == "/slow" {
			release.Wait()
		}
		io.WriteString(w, "tail")
	}))
	defer release.Release()
	var g graph
	var wrapper *plainWrapper
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		fx.Decorate(func(rt http.RoundTripper) http.RoundTripper {
			wrapper = &plainWrapper{next: rt}
			return wrapper
		}),
	)
	app.RequireStart()
	mustGet(t, g.Client, u.URL)
	if wrapper.calls.Load() != 1 {
		t.Fatalf("wrapper saw %d requests, want 1", wrapper.calls.Load())
	}
	// A consumer's CloseIdleConnections leaves the shared pool alone and is counted; the
	// owner's flush reaches the owned transport through the wrapper.
	g.Client.CloseIdleConnections()
	if s := g.Stats.Snapshot(); s.CloseIdleIgnored != 1 || s.ConnsOpen != 1 {
		t.Errorf("after a consumer's CloseIdleConnections: ignored %d, open %d; want 1 and 1", s.CloseIdleIgnored, s.ConnsOpen)
	}
	if err := httpfx.CloseIdleConnections(g.Client); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the idle connection is closed through the wrapper", func() bool { return u.Open() == 0 })

	// Drain still covers requests through the wrapper.
	resp, err := g.Client.Get(u.URL + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	testutil.WaitFor(t, "the gate closes", func() bool { return gateClosed(g.Client, u.URL) })
	select {
	case err := <-stopped:
		t.Fatalf("stop returned (%v) while a body was still being read", err)
	default:
	}
	release.Release()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "head-tail" {
		t.Fatalf("body = %q, %v; want head-tail", b, err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
	u.RequireNoConns(t) // The owned transport was closed although the wrapper hides it.
}

// callerRT is a caller's round tripper with its own transport; it counts CloseIdleConnections.
type callerRT struct {
	tr         *http.Transport
	closeCalls atomic.Int64
}

func (c *callerRT) RoundTrip(r *http.Request) (*http.Response, error) { return c.tr.RoundTrip(r) }
func (c *callerRT) CloseIdleConnections()                             { c.closeCalls.Add(1) }

func TestDecorateReplaceRoundTripper(t *testing.T) {
	release := testutil.NewGate()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		if r.URL.Path == "/slow" {
			release.Wait()
		}
		io.WriteString(w, "done")
	}))
	defer release.Release()
	mine := &callerRT{tr: &http.Transport{}}
	defer mine.tr.CloseIdleConnections()
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		fx.Decorate(func(http.RoundTripper) http.RoundTripper { return mine }),
	)
	app.RequireStart()
	resp, err := g.Client.Get(u.URL + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	testutil.WaitFor(t, "the gate closes", func() bool { return gateClosed(g.Client, u.URL) })
	select {
	case err := <-stopped:
		t.Fatalf("stop returned (%v) before the caller's round tripper finished", err)
	default:
	}
	release.Release()
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "done" {
		t.Fatalf("body = %q, want done", b)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := mine.closeCalls.Load(); n != 0 {
		t.Errorf("httpfx called the caller's CloseIdleConnections %d times, want 0", n)
	}
	if n := u.Closed(); n != 0 {
		t.Errorf("%d of the caller's connections were closed at stop, want none", n)
	}
	mine.tr.CloseIdleConnections()
	u.RequireNoConns(t)
}

func TestDecorateReplaceClient(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	mine := &http.Client{Transport: &http.Transport{}}
	defer mine.CloseIdleConnections()
	core, logs := observer.New(zap.InfoLevel)
	var got *http.Client
	var stats *httpfx.Stats
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)),
		fx.Decorate(func(*http.Client) *http.Client { return mine }),
		fx.Populate(&got, &stats),
	)
	app.RequireStart()
	if got != mine {
		t.Fatalf("consumers got %p, want the caller's client %p", got, mine)
	}
	mustGet(t, got, u.URL)
	app.RequireStop()
	if s := stats.Snapshot(); s.Requests != 0 {
		t.Errorf("httpfx tracked %d requests of the caller's client, want 0", s.Requests)
	}
	// The caller's client and its connection were left alone and still work.
	if u.Open() != 1 {
		t.Errorf("server has %d open connections, want the caller's 1", u.Open())
	}
	if body := mustGet(t, got, u.URL); body != "ok" {
		t.Errorf("caller's client after stop: %q", body)
	}
	if u.Opened() != 1 {
		t.Errorf("server accepted %d connections, want 1 reused by the caller's client", u.Opened())
	}
	if n := logs.FilterMessageSnippet("caller-supplied *http.Client").Len(); n != 1 {
		t.Errorf("caller-supplied client logged %d times, want once", n)
	}
	mine.CloseIdleConnections()
	u.RequireNoConns(t)
}

func TestDecorateConfigKeepsOtherDefaults(t *testing.T) {
	t.Parallel()
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		fx.Decorate(func(c httpfx.Config) httpfx.Config {
			c.MaxConnsPerHost = 3
			return c
		}),
	)
	defer app.RequireStart().RequireStop()
	want := httpfx.DefaultConfig()
	want.MaxConnsPerHost = 3
	if !reflect.DeepEqual(g.Config, want) {
		t.Errorf("Config = %+v, want defaults with MaxConnsPerHost 3", g.Config)
	}
	if g.Transport.MaxConnsPerHost != 3 || g.Transport.MaxIdleConnsPerHost != want.MaxIdleConnsPerHost {
		t.Errorf("transport = %d max / %d idle per host, want 3 / %d",
			g.Transport.MaxConnsPerHost, g.Transport.MaxIdleConnsPerHost, want.MaxIdleConnsPerHost)
	}
}

func TestReplaceConfig(t *testing.T) {
	t.Parallel()
	give := httpfx.Config{MaxIdleConnsPerHost: 4, MaxConnsPerHost: 4, DrainTimeout: time.Second}
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), fx.Replace(give))
	defer app.RequireStart().RequireStop()
	if !reflect.DeepEqual(g.Config, give) {
		t.Errorf("Config = %+v, want the replacement %+v", g.Config, give)
	}
	if g.Transport.MaxIdleConnsPerHost != 4 || g.Transport.IdleConnTimeout != 0 || g.Transport.Proxy != nil {
		t.Errorf("transport does not follow the replaced config: idle/host %d, idle timeout %v, proxy set %v",
			g.Transport.MaxIdleConnsPerHost, g.Transport.IdleConnTimeout, g.Transport.Proxy != nil)
	}
}

// New works without fx: with fxtest's lifecycle, and with no lifecycle and Shutdown.
func TestNewWithoutFx(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	t.Run("lifecycle", func(t *testing.T) {
		lc := fxtest.NewLifecycle(t)
		res, err := httpfx.New(httpfx.Params{Lifecycle: lc, Config: httpfx.DefaultConfig()})
		if err != nil {
			t.Fatal(err)
		}
		lc.RequireStart()
		mustGet(t, res.Client, u.URL)
		lc.RequireStop()
		if _, err := res.Client.Get(u.URL); !errors.Is(err, httpfx.ErrClosed) {
			t.Errorf("after stop: %v, want ErrClosed", err)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		res, err := httpfx.New(httpfx.Params{Config: httpfx.DefaultConfig()})
		if err != nil {
			t.Fatal(err)
		}
		mustGet(t, res.Client, u.URL)
		if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
			t.Fatal(err)
		}
		if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
			t.Errorf("second Shutdown: %v, want the first's nil", err)
		}
		if _, err := res.Client.Get(u.URL); !errors.Is(err, httpfx.ErrClosed) {
			t.Errorf("after Shutdown: %v, want ErrClosed", err)
		}
	})
	t.Run("not ours", func(t *testing.T) {
		err := httpfx.Shutdown(context.Background(), &http.Client{})
		if err == nil || !strings.Contains(err.Error(), "not built by httpfx") {
			t.Errorf("Shutdown of a foreign client: %v, want a refusal", err)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		_, err := httpfx.New(httpfx.Params{Config: httpfx.Config{DialTimeout: -1}})
		if err == nil || !strings.Contains(err.Error(), "DialTimeout") {
			t.Errorf("New with bad config: %v, want an error naming DialTimeout", err)
		}
	})
	u.RequireNoConns(t)
}

// Stop ends a dial still running, even with no DialTimeout and no deadline on the request
// that asked for it: nothing of the transport's outlives stop.
func TestStopEndsAHungDial(t *testing.T) {
	dialing := make(chan struct{}, 1)
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		withConfig(func(c *httpfx.Config) {
			c.DialTimeout, c.Timeout, c.DrainTimeout = 0, 0, 100*time.Millisecond
		}),
		fx.Decorate(func(tr *http.Transport) *http.Transport {
			tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
				dialing <- struct{}{}
				<-ctx.Done() // a connect that never completes
				return nil, ctx.Err()
			}
			return tr
		}))
	app.RequireStart()
	errs := make(chan error, 1)
	go func() {
		_, err := get(g.Client, "http://hang.test/")
		errs <- err
	}()
	<-dialing
	stopErr := app.Stop(context.Background())
	if err := <-errs; !errors.Is(err, httpfx.ErrClosed) {
		t.Errorf("the request: %v, want ErrClosed", err)
	}
	if stopErr == nil || !strings.Contains(stopErr.Error(), "cut 1") {
		t.Errorf("stop: %v, want 1 cut", stopErr)
	}
	if err := goleak.Find(); err != nil {
		t.Errorf("the dial outlived stop: %v", err)
	}
}
