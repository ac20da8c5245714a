package httpfx_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// echoHandler answers with the request's path and the headers named in the test.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path+" auth="+r.Header.Get("Authorization")+" v="+r.Header.Get("X-Api-Version"))
	})
}

// upstreams is what upstream tests take from the app.
type upstreams struct {
	fx.In

	Payments *http.Client `name:"payments"`
	Search   *http.Client `name:"search"`
	Shared   *http.Client
	Stats    *httpfx.Stats
}

func TestUpstreamsSharePoolResolveAndScopeHeaders(t *testing.T) {
	u := testutil.NewServer(t, echoHandler())
	other := testutil.NewServer(t, echoHandler())
	var got upstreams
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{
			BaseURL: u.URL + "/api/",
			Headers: map[string]string{"Authorization": "Bearer pay-secret", "X-API-Version": "2"},
		}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL + "/search/"}),
		fx.Populate(&got),
	)
	app.RequireStart()

	tests := []struct {
		name   string
		client *http.Client
		give   string
		want   string
	}{
		{"relative path appends to the base path", got.Payments, "v1/charges", "/api/v1/charges auth=Bearer pay-secret v=2"},
		{"absolute path replaces it", got.Payments, "/v1/refunds", "/v1/refunds auth=Bearer pay-secret v=2"},
		{"absolute URL of the same origin gets the headers", got.Payments, u.URL + "/x", "/x auth=Bearer pay-secret v=2"},
		{"another host never gets them", got.Payments, other.URL + "/x", "/x auth= v="},
		{"another upstream has its own base and no headers", got.Search, "q", "/search/q auth= v="},
		{"the shared client sends nothing extra", got.Shared, u.URL + "/plain", "/plain auth= v="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if body := mustGet(t, tt.client, tt.give); body != tt.want {
				t.Errorf("GET %s = %q, want %q", tt.give, body, tt.want)
			}
		})
	}
	t.Run("a request's own header wins", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "v1", nil)
		req.Header.Set("X-Api-Version", "3")
		resp, err := got.Payments.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "/api/v1 auth=Bearer pay-secret v=3"; string(b) != want {
			t.Errorf("got %q, want %q", b, want)
		}
	})

	s := got.Stats.Snapshot()
	if s.ConnsOpened != 2 || u.Opened() != 1 {
		t.Errorf("connections opened = %d (server u accepted %d), want 2: one to u shared by every client, one to the other host",
			s.ConnsOpened, u.Opened())
	}
	if p, q := s.Upstreams["payments"], s.Upstreams["search"]; p.Requests != 5 || q.Requests != 1 || s.Requests != 7 {
		t.Errorf("requests: payments %d, search %d, total %d; want 5, 1, 7", p.Requests, q.Requests, s.Requests)
	}
	app.RequireStop()
	u.RequireNoConns(t)
	other.RequireNoConns(t)
}

// The default headers never follow a redirect to another host; they do follow one to the
// upstream itself. Caller-set credentials do not follow a redirect to another host, nor to
// another port of the same host (net/http alone would forward them there).
func TestUpstreamHeadersDoNotFollowRedirectsElsewhere(t *testing.T) {
	other := testutil.NewServer(t, echoHandler())
	otherHost := strings.Replace(other.URL, "127.0.0.1", "localhost", 1)
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, otherHost+"/landed", http.StatusFound)
		case "/other-port":
			http.Redirect(w, r, other.URL+"/landed", http.StatusFound)
		case "/home":
			http.Redirect(w, r, "/api/landed", http.StatusFound)
		default:
			echoHandler().ServeHTTP(w, r)
		}
	}))
	var got upstreams
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{
			BaseURL: u.URL + "/api/",
			Headers: map[string]string{"Authorization": "Bearer pay-secret", "X-Api-Version": "2"},
		}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: other.URL}),
		fx.Populate(&got),
	)
	app.RequireStart()
	if body := mustGet(t, got.Payments, "/away"); body != "/landed auth= v=" {
		t.Errorf("after a redirect to another host the upstream saw %q, want no headers", body)
	}
	if body := mustGet(t, got.Payments, "/home"); body != "/api/landed auth=Bearer pay-secret v=2" {
		t.Errorf("after a redirect to the same upstream: %q, want the headers", body)
	}
	for _, path := range []string{"/away", "/other-port"} {
		req, _ := http.NewRequest(http.MethodGet, u.URL+path, nil)
		req.Header.Set("Authorization", "Bearer caller-secret")
		resp, err := got.Shared.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "/landed auth= v=" {
			t.Errorf("shared client forwarded Authorization on a redirect (%s): %q", path, b)
		}
	}
	app.RequireStop()
	u.RequireNoConns(t)
	other.RequireNoConns(t)
}

func TestUpstreamTimeoutAndConnectionLimit(t *testing.T) {
	release := testutil.NewGate()
	defer release.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			time.Sleep(400 * time.Millisecond)
		case "/hang":
			release.Wait()
		}
		io.WriteString(w, "ok")
	}))
	var got struct {
		fx.In
		Fast    *http.Client `name:"fast"`
		Patient *http.Client `name:"patient"`
		Limited *http.Client `name:"limited"`
		Stats   *httpfx.Stats
	}
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&got),
		withConfig(func(c *httpfx.Config) { c.Timeout = 200 * time.Millisecond }),
		httpfx.Upstream("fast", httpfx.UpstreamConfig{BaseURL: u.URL, Timeout: 100 * time.Millisecond}),
		httpfx.Upstream("patient", httpfx.UpstreamConfig{BaseURL: u.URL, Timeout: 10 * time.Second}),
		httpfx.Upstream("limited", httpfx.UpstreamConfig{BaseURL: u.URL, MaxConnsPerHost: 2}),
	)
	app.RequireStart()

	_, err := get(got.Fast, "/slow")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `upstream "fast" Timeout (100ms)`) {
		t.Errorf("fast upstream on a slow handler: %v, want its own timeout", err)
	}
	if body, err := get(got.Patient, "/slow"); err != nil || body != "ok" {
		t.Errorf("patient upstream (Timeout 10s, module 200ms): %q, %v; want ok", body, err)
	}

	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := get(got.Limited, "/hang"); err != nil {
				t.Errorf("limited upstream: %v", err)
			}
		}()
	}
	testutil.WaitFor(t, "2 requests reach the server", func() bool { return release.Waiting.Load() == 2 })
	time.Sleep(50 * time.Millisecond) // give a third request the chance to break the limit
	if n := release.Waiting.Load(); n != 2 {
		t.Errorf("%d requests reached the server at once, want MaxConnsPerHost 2", n)
	}
	release.Release()
	wg.Wait()
	if s := got.Stats.Snapshot().Upstreams["limited"]; s.Requests != 5 || s.InFlight != 0 {
		t.Errorf("limited upstream stats = %+v, want 5 requests, none in flight", s)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// Stop drains the requests of every upstream client, and then refuses theirs with ErrClosed.
func TestStopDrainsEveryUpstream(t *testing.T) {
	release := testutil.NewGate()
	defer release.Release()
	u := testutil.NewServer(t, streamHandler(release, 3))
	var got upstreams
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&got),
		httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: u.URL}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}),
	)
	app.RequireStart()
	bodies := make(chan string, 2)
	for _, c := range []*http.Client{got.Payments, got.Search} {
		go func() {
			b, err := get(c, "/stream")
			if err != nil {
				b = err.Error()
			}
			bodies <- b
		}()
	}
	testutil.WaitFor(t, "both streams started", func() bool { return release.Waiting.Load() == 2 })
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	testutil.WaitFor(t, "the gate closes", func() bool { return gateClosed(got.Search, "/probe") })
	release.Release()
	for range 2 {
		if b := <-bodies; b != wantStream(3) {
			t.Errorf("upstream body %q, want the whole stream", b)
		}
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if _, err := get(got.Payments, "/x"); !errors.Is(err, httpfx.ErrClosed) {
		t.Errorf("upstream request after stop: %v, want ErrClosed", err)
	}
	if err := httpfx.Shutdown(context.Background(), got.Payments); err != nil {
		t.Errorf("Shutdown through an upstream client: %v, want the module's nil result", err)
	}
	u.RequireNoConns(t)
}

// Upstreams load from YAML and the environment, as the rest of Config does.
func TestUpstreamFromConfig(t *testing.T) {
	u := testutil.NewServer(t, echoHandler())
	cfg, err := httpfx.LoadYAML([]byte("upstreams:\n  payments:\n    base_url: " + u.URL + "/api/\n    headers:\n      Authorization: Bearer from-file\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.ApplyEnv([]string{"HTTPFX_UPSTREAMS__PAYMENTS__HEADERS__X_API_VERSION=7"}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		fx.In
		Payments *http.Client `name:"payments"`
	}
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Replace(cfg), fx.Populate(&got),
		httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "http://overridden.invalid", Headers: map[string]string{"X-Api-Version": "1"}}),
	)
	app.RequireStart()
	if body := mustGet(t, got.Payments, "charges"); body != "/api/charges auth=Bearer from-file v=7" {
		t.Errorf("got %q: want the file's base URL and header and the environment's version", body)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

func TestBadUpstreamFailsFxNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give fx.Option
		want string
	}{
		{"missing base URL", httpfx.Upstream("payments", httpfx.UpstreamConfig{}),
			`httpfx: config: upstream "payments": BaseURL is empty`},
		{"bad scheme", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "ftp://pay"}),
			`upstream "payments": BaseURL scheme "ftp": want http or https`},
		{"credentials in URL", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://u:hunter2@pay"}),
			`upstream "payments": BaseURL holds credentials`},
		{"bad header name", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay", Headers: map[string]string{"Bad Header": "x"}}),
			`upstream "payments": Headers: "Bad Header" is not a valid header name`},
		{"negative timeout", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay", Timeout: -time.Second}),
			`upstream "payments": Timeout is -1s`},
		{"timeout of the largest duration", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay", Timeout: math.MaxInt64}),
			`upstream "payments": Timeout is 2562047h47m16.854775807s: want at most 87600h0m0s (ten years)`},
		{"framing header", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay/", Headers: map[string]string{"content-length": "3"}}),
			`upstream "payments": Headers: "content-length" is set by net/http from the request itself, never from Headers: remove it`},
		{"base URL whose path does not end in a slash", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay/api"}),
			`upstream "payments": BaseURL has a path that does not end in "/": a relative request URL such as "v1/x" would replace its last segment`},
		{"base URL without a host name", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://:8443/api/"}),
			`upstream "payments": BaseURL has no host: want http(s)://host[:port][/path/]`},
		{"base URL with a port out of range", httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay:99999/api/"}),
			`upstream "payments": BaseURL has port "99999": want 1 to 65535`},
		{"bad name", httpfx.Upstream("Payments API", httpfx.UpstreamConfig{BaseURL: "https://pay"}),
			`httpfx: upstream name "Payments API": want lower-case letters`},
		{"bad entry in Config", fx.Options(
			httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay"}),
			fx.Decorate(func(c httpfx.Config) httpfx.Config {
				c.Upstreams = map[string]httpfx.UpstreamConfig{"payments": {BaseURL: "not a url"}}
				return c
			}),
		), `upstream "payments": BaseURL scheme ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := fx.New(fx.NopLogger, httpfx.Module, tt.give,
				fx.Invoke(fx.Annotate(func(*http.Client) {}, fx.ParamTags(`name:"payments"`))))
			err := app.Err()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("fx.New error = %v, want one containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the URL's password: %v", err)
			}
		})
	}
}

// A configured upstream that no component uses is reported at start.
func TestUnusedUpstreamIsReported(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.WarnLevel)
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)),
		withConfig(func(c *httpfx.Config) {
			c.Upstreams = map[string]httpfx.UpstreamConfig{"ghost": {BaseURL: "https://ghost.internal"}}
		}))
	app.RequireStart().RequireStop()
	entries := logs.FilterMessageSnippet("no component takes a client of that name").All()
	if len(entries) != 1 || entries[0].ContextMap()["upstream"] != "ghost" {
		t.Errorf("warnings %v, want one naming the unused upstream", entries)
	}
}

// Every hop of an upstream client's redirect chain resolves against the previous hop's
// absolute URL, so that a relative Location stays under the base path and keeps the headers.
func TestUpstreamRelativeRedirectStaysUnderBase(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		loc := map[string]string{
			"/base/v1/x":     "y",
			"/base/v1/q":     "?page=2",
			"/base/v1/a":     "b",
			"/base/v1/b":     "../c",
			"/base/v1/slash": "/base/top",
		}[r.URL.Path]
		if loc != "" && r.URL.RawQuery == "" {
			w.Header().Set("Location", loc)
			w.WriteHeader(http.StatusFound)
			return
		}
		io.WriteString(w, r.URL.RequestURI()+" auth="+r.Header.Get("Authorization"))
	}))
	var got upstreams
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{
			BaseURL: u.URL + "/base/",
			Headers: map[string]string{"Authorization": "Bearer pay-secret"},
		}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}),
		fx.Populate(&got),
	)
	app.RequireStart()
	tests := []struct {
		give string
		want string
	}{
		{"v1/x", "/base/v1/y auth=Bearer pay-secret"},
		{"v1/q", "/base/v1/q?page=2 auth=Bearer pay-secret"},
		{"v1/a", "/base/c auth=Bearer pay-secret"}, // two hops: y then ../c
		{"v1/slash", "/base/top auth=Bearer pay-secret"},
		{u.URL + "/base/v1/x", "/base/v1/y auth=Bearer pay-secret"},
	}
	for _, tt := range tests {
		if body := mustGet(t, got.Payments, tt.give); body != tt.want {
			t.Errorf("GET %s = %q, want %q", tt.give, body, tt.want)
		}
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// A scheme-relative URL takes the base's scheme, and the headers if it names the base's host.
func TestUpstreamSchemeRelativeURL(t *testing.T) {
	u := testutil.NewServer(t, echoHandler())
	other := testutil.NewServer(t, echoHandler())
	var got upstreams
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{
			BaseURL: u.URL + "/api/",
			Headers: map[string]string{"Authorization": "Bearer pay-secret"},
		}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}),
		fx.Populate(&got),
	)
	app.RequireStart()
	tests := []struct {
		give string
		want string
	}{
		{"//" + u.Listener.Addr().String() + "/x", "/x auth=Bearer pay-secret v="},
		{"//" + other.Listener.Addr().String() + "/x", "/x auth= v="},
	}
	for _, tt := range tests {
		if body := mustGet(t, got.Payments, tt.give); body != tt.want {
			t.Errorf("GET %s = %q, want %q", tt.give, body, tt.want)
		}
	}
	app.RequireStop()
	u.RequireNoConns(t)
	other.RequireNoConns(t)
}

// Requests waiting for an upstream's MaxConnsPerHost slot are in flight in the upstream's
// counters as in the totals, and counted as waiting.
func TestUpstreamInFlightCountsWaiting(t *testing.T) {
	hold := testutil.NewGate()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hold.Wait()
		io.WriteString(w, "ok")
	}))
	var got upstreams
	app := fxtest.New(t, fx.NopLogger, httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: u.URL, MaxConnsPerHost: 1}),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}),
		fx.Populate(&got),
	)
	app.RequireStart()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mustGet(t, got.Payments, "/")
		}()
	}
	testutil.WaitFor(t, "one request at the server, one waiting for the slot", func() bool {
		return hold.Waiting.Load() == 1 && got.Stats.Snapshot().Upstreams["payments"].Waiting == 1
	})
	s := got.Stats.Snapshot()
	if p := s.Upstreams["payments"]; p.InFlight != 2 || s.InFlight != 2 {
		t.Errorf("in flight: upstream %d (waiting %d), total %d; want 2, 1, 2", p.InFlight, p.Waiting, s.InFlight)
	}
	hold.Release()
	wg.Wait()
	if p := got.Stats.Snapshot().Upstreams["payments"]; p.InFlight != 0 || p.Waiting != 0 || p.Requests != 2 {
		t.Errorf("after: %+v, want 2 requests, none in flight or waiting", p)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// A declared upstream is validated when the graph is built, whether or not a component takes
// its client; duplicate header names are rejected on every path, and the file's value wins.
func TestUpstreamValidatedWithoutConsumer(t *testing.T) {
	file := func(h map[string]string) fx.Option {
		return fx.Decorate(func(c httpfx.Config) httpfx.Config {
			c.Upstreams = map[string]httpfx.UpstreamConfig{"payments": {Headers: h}}
			return c
		})
	}
	tests := []struct {
		name string
		give fx.Option
		want string
	}{
		{"missing base URL", httpfx.Upstream("payments", httpfx.UpstreamConfig{}),
			`upstream "payments": BaseURL is empty`},
		{"bad file entry", fx.Options(
			httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay"}),
			fx.Decorate(func(c httpfx.Config) httpfx.Config {
				c.Upstreams = map[string]httpfx.UpstreamConfig{"payments": {BaseURL: "ftp://pay"}}
				return c
			}),
		), `upstream "payments": BaseURL scheme "ftp"`},
		{"duplicate headers in code", httpfx.Upstream("payments", httpfx.UpstreamConfig{
			BaseURL: "https://pay", Headers: map[string]string{"x-key": "a", "X-Key": "b"}}),
			`name the same header`},
		{"duplicate headers in code beside a file entry", fx.Options(
			httpfx.Upstream("payments", httpfx.UpstreamConfig{
				BaseURL: "https://pay", Headers: map[string]string{"x-key": "a", "X-Key": "b"}}),
			file(map[string]string{"Other": "z"}),
		), `name the same header`},
		{"duplicate headers in the file", fx.Options(
			httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://pay"}),
			file(map[string]string{"x-key": "a", "X-KEY": "b"}),
		), `name the same header`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fx.New(fx.NopLogger, httpfx.Module, tt.give).Err()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("fx.New error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	t.Run("the file's value wins", func(t *testing.T) {
		u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, strings.Join(r.Header.Values("X-Key"), ","))
		}))
		for range 5 {
			var got upstreams
			app := fxtest.New(t, fx.NopLogger, httpfx.Module,
				httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: u.URL, Headers: map[string]string{"x-key": "code"}}),
				httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL}),
				file(map[string]string{"X-KEY": "file"}),
				fx.Populate(&got),
			)
			app.RequireStart()
			if body := mustGet(t, got.Payments, "/"); body != "file" {
				t.Errorf("X-Key sent = %q, want the file's value only", body)
			}
			app.RequireStop()
		}
		u.RequireNoConns(t)
	})
}

// Every credential header a caller sets is dropped from a redirect to another host or to
// another port of the same host, and kept on a redirect within the origin.
func TestCredentialHeadersDoNotFollowRedirectsElsewhere(t *testing.T) {
	dump := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"Authorization", "Proxy-Authorization", "Cookie", "Cookie2", "Www-Authenticate", "Proxy-Authenticate"} {
			fmt.Fprintf(w, "%s=%s;", h, r.Header.Get(h))
		}
	})
	other := testutil.NewServer(t, dump)
	otherHost := strings.Replace(other.URL, "127.0.0.1", "localhost", 1)
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, otherHost+"/landed", http.StatusFound)
		case "/other-port":
			http.Redirect(w, r, other.URL+"/landed", http.StatusFound)
		case "/home":
			http.Redirect(w, r, "/landed", http.StatusFound)
		default:
			dump.ServeHTTP(w, r)
		}
	}))
	var client *http.Client
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&client))
	app.RequireStart()
	const none = "Authorization=;Proxy-Authorization=;Cookie=;Cookie2=;Www-Authenticate=;Proxy-Authenticate=;"
	const all = "Authorization=a;Proxy-Authorization=pa;Cookie=c;Cookie2=c2;Www-Authenticate=wa;Proxy-Authenticate=pw;"
	for _, tt := range []struct{ give, want string }{
		{give: "/away", want: none},
		{give: "/other-port", want: none},
		{give: "/home", want: all},
	} {
		req, _ := http.NewRequest(http.MethodGet, u.URL+tt.give, nil)
		for h, v := range map[string]string{"Authorization": "a", "Proxy-Authorization": "pa", "Cookie": "c", "Cookie2": "c2", "Www-Authenticate": "wa", "Proxy-Authenticate": "pw"} {
			req.Header.Set(h, v)
		}
		if b := mustDo(t, client, req); b != tt.want {
			t.Errorf("redirect %s: the target saw %q, want %q", tt.give, b, tt.want)
		}
	}
	app.RequireStop()
	u.RequireNoConns(t)
	other.RequireNoConns(t)
}

// An upstream's "Host" header sets the Host its requests carry (net/http ignores
// Header["Host"]), unless the caller set another, and never on a request to another host.
func TestUpstreamHostHeader(t *testing.T) {
	host := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Host) })
	other := testutil.NewServer(t, host)
	u := testutil.NewServer(t, host)
	var g struct {
		fx.In
		Up *http.Client `name:"vhost"`
	}
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&g),
		httpfx.Upstream("vhost", httpfx.UpstreamConfig{BaseURL: u.URL + "/", Headers: map[string]string{"host": "billing.internal"}}))
	app.RequireStart()
	own, _ := http.NewRequest(http.MethodGet, u.URL+"/x", nil)
	own.Host = "chosen.internal"
	for _, tt := range []struct {
		name string
		give *http.Request
		want string
	}{
		{name: "relative URL", give: mustRequest(t, "x"), want: "billing.internal"},
		{name: "absolute URL to the base", give: mustRequest(t, u.URL+"/x"), want: "billing.internal"},
		{name: "the caller's own Host", give: own, want: "chosen.internal"},
		{name: "another host", give: mustRequest(t, other.URL+"/x"), want: strings.TrimPrefix(other.URL, "http://")},
	} {
		if b := mustDo(t, g.Up, tt.give); b != tt.want {
			t.Errorf("%s: the server saw Host %q, want %q", tt.name, b, tt.want)
		}
	}
	app.RequireStop()
	u.RequireNoConns(t)
	other.RequireNoConns(t)
}

func mustRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
