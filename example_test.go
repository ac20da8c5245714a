package httpfx_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
)

// The README's snippets are these examples' bodies; TestReadmeSnippets keeps them
// in step.

// Add the module and take *http.Client wherever you need it.
func Example() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer upstream.Close()

	var client *http.Client
	var stats *httpfx.Stats
	app := fx.New(
		fx.NopLogger,
		httpfx.Module,
		fx.Populate(&client, &stats),
	)
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	for range 3 {
		resp, err := client.Get(upstream.URL)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(string(body))
	}
	if err := app.Stop(context.Background()); err != nil {
		panic(err)
	}
	s := stats.Snapshot()
	fmt.Printf("%d requests, %d connection opened, reuse ratio %.2f\n", s.Requests, s.ConnsOpened, s.ReuseRatio())
	// Output:
	// hello
	// hello
	// hello
	// 3 requests, 1 connection opened, reuse ratio 0.67
}

// Adjust the owned transport in place; httpfx still owns and closes it.
func Example_decorateTransport() {
	app := fx.New(fx.NopLogger, httpfx.Module,
		fx.Decorate(func(t *http.Transport) *http.Transport {
			t.MaxResponseHeaderBytes = 64 << 10
			return t
		}),
		fx.Invoke(func(t *http.Transport) { fmt.Println(t.MaxResponseHeaderBytes) }),
	)
	fmt.Println(app.Err())
	// Output:
	// 65536
	// <nil>
}

// Wrap the round tripper (tracing, logging). The wrapper needs no CloseIdleConnections:
// httpfx drains requests through it and closes the transport it built directly.
func Example_wrapRoundTripper() {
	app := fx.New(fx.NopLogger, httpfx.Module,
		fx.Decorate(func(next http.RoundTripper) http.RoundTripper {
			return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
				r = r.Clone(r.Context())
				r.Header.Set("X-Request-Source", "billing")
				return next.RoundTrip(r)
			})
		}),
	)
	fmt.Println(app.Err())
	// Output: <nil>
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Replace the client with your own: consumers get yours as-is, and httpfx neither drains nor
// closes it.
func Example_replaceClient() {
	mine := &http.Client{Timeout: 5 * time.Second}
	var got *http.Client
	app := fx.New(fx.NopLogger, httpfx.Module,
		fx.Decorate(func(*http.Client) *http.Client { return mine }),
		fx.Populate(&got),
	)
	fmt.Println(app.Err(), got == mine)
	// Output: <nil> true
}

// Change one field and keep the other defaults.
func Example_decorateConfig() {
	app := fx.New(fx.NopLogger, httpfx.Module,
		fx.Decorate(func(c httpfx.Config) httpfx.Config {
			c.Timeout = 5 * time.Second
			return c
		}),
		fx.Invoke(func(c httpfx.Config) { fmt.Println(c.Timeout, c.MaxIdleConnsPerHost) }),
	)
	fmt.Println(app.Err())
	// Output:
	// 5s 512
	// <nil>
}

// Replace the whole Config, for example with one loaded from a file and the environment.
func Example_replaceConfig() {
	cfg, err := httpfx.LoadYAML([]byte("timeout: 10s\nmax_conns_per_host: 64\nmax_idle_conns_per_host: 64\n"))
	if err != nil {
		panic(err)
	}
	if err := cfg.ApplyEnv([]string{"HTTPFX_DIAL_TIMEOUT=2s"}); err != nil {
		panic(err)
	}
	app := fx.New(fx.NopLogger, httpfx.Module,
		fx.Replace(cfg),
		fx.Invoke(func(t *http.Transport) { fmt.Println(t.MaxConnsPerHost) }),
	)
	fmt.Println(app.Err(), cfg.Timeout, cfg.DialTimeout)
	// Output:
	// 64
	// <nil> 10s 2s
}

// A bad Config makes fx.New fail with an error that names the field.
func ExampleConfig_Validate() {
	cfg := httpfx.DefaultConfig()
	cfg.MaxIdleConns = 100
	fmt.Println(cfg.Validate())
	// Output: httpfx: config: MaxIdleConnsPerHost (512) exceeds MaxIdleConns (100): the per-host idle pool could never fill; raise MaxIdleConns or lower MaxIdleConnsPerHost
}

// Without fx: build the client with New and stop it with Shutdown.
func ExampleNew() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer upstream.Close()

	res, err := httpfx.New(httpfx.Params{Config: httpfx.DefaultConfig()})
	if err != nil {
		panic(err)
	}
	resp, err := res.Client.Get(upstream.URL)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fmt.Println(httpfx.Shutdown(ctx, res.Client)) // gate, drain, close
	_, err = res.Client.Get(upstream.URL)
	fmt.Println(errors.Is(err, httpfx.ErrClosed))
	// Output:
	// hello
	// <nil>
	// true
}

// Load a Config from environment variables over the defaults.
func ExampleLoadEnv() {
	cfg, err := httpfx.LoadEnv([]string{"HTTPFX_TIMEOUT=5s", "HTTPFX_MAX_IDLE_CONNS_PER_HOST=oops"})
	fmt.Println(cfg.Timeout, err)
	// Output: 0s httpfx: config: HTTPFX_MAX_IDLE_CONNS_PER_HOST: invalid integer "oops": want a whole number such as 100
}

// PaymentsClient is a component that calls one upstream through its named client.
type PaymentsClient struct{ http *http.Client }

// NewPaymentsClient takes the client named "payments".
func NewPaymentsClient(c *http.Client) *PaymentsClient { return &PaymentsClient{http: c} }

// Charge calls the payments upstream with a URL relative to its base.
func (p *PaymentsClient) Charge() (string, error) {
	resp, err := p.http.Get("v1/charges")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// SearchParams takes the client named "search" in an fx.In struct.
type SearchParams struct {
	fx.In

	Client *http.Client `name:"search"`
}

// Declare named upstream clients; they share the module's pool, drain and counters.
func Example_upstreams() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.URL.Path, r.Header.Get("Authorization"))
	}))
	defer upstream.Close()

	var payments *PaymentsClient
	var search SearchParams
	var stats *httpfx.Stats
	app := fx.New(
		fx.NopLogger,
		httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{
			BaseURL: upstream.URL + "/payments/",
			Headers: map[string]string{"Authorization": "Bearer sk-test"},
			Timeout: 5 * time.Second,
		}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: upstream.URL + "/search/"}),
		fx.Provide(fx.Annotate(NewPaymentsClient, fx.ParamTags(`name:"payments"`))),
		fx.Populate(&payments, &search, &stats),
	)
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	fmt.Println(payments.Charge())
	resp, err := search.Client.Get("q?term=go")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("%q\n", body)
	if err := app.Stop(context.Background()); err != nil {
		panic(err)
	}
	s := stats.Snapshot()
	fmt.Println(s.Requests, s.ConnsOpened, s.Upstreams["payments"].Requests)
	// Output:
	// /payments/v1/charges Bearer sk-test <nil>
	// "/search/q "
	// 2 1 1
}

// Trust a private CA, present a client certificate (mutual TLS) and use an explicit proxy.
func Example_tlsAndProxy() {
	cfg, err := httpfx.LoadYAML([]byte(`
tls_ca_file: testdata/example-ca.pem
tls_min_version: "1.3"
proxy_url: http://proxy.internal:3128
no_proxy: .svc.cluster.local, 10.0.0.0/8
`))
	fmt.Println(cfg.TLSMinVersion, cfg.NoProxy, err)
	// Output: 1.3 .svc.cluster.local, 10.0.0.0/8 <nil>
}

// slowLog is an Observer that prints the requests slower than a bound, and the failed ones.
type slowLog struct{ bound time.Duration }

func (l slowLog) RequestStarted(httpfx.RequestEvent) {}

func (l slowLog) RequestFinished(ev httpfx.RequestEvent) {
	if ev.Error != "" || ev.Duration > l.bound {
		fmt.Printf("%s %s: status %d, error %q\n", ev.Method, ev.Host, ev.StatusCode, ev.Error)
	}
}

func (l slowLog) ConnChanged(httpfx.ConnEvent) {}

// Observe the client's requests and connections with an Observer of your own, given to the
// module through the value group "httpfx.observers".
func Example_observer() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers: the request times out
	}))
	defer upstream.Close()

	var client *http.Client
	app := fx.New(fx.NopLogger, httpfx.Module,
		fx.Supply(fx.Annotate(slowLog{bound: time.Second}, fx.As(new(httpfx.Observer)), fx.ResultTags(`group:"httpfx.observers"`))),
		fx.Populate(&client),
	)
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, upstream.URL, nil)
	if _, err := client.Do(req); err == nil {
		panic("no error")
	}
	if err := app.Stop(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// GET 127.0.0.1: status 0, error "timeout"
}
