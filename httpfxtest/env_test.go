package httpfxtest_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/httpfxtest"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

func okHandler(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })
}

// drainTimeout keeps the stop of a leaky app short.
func drainTimeout(d time.Duration) fx.Option {
	return fx.Decorate(func(c httpfx.Config) httpfx.Config {
		c.DrainTimeout = d
		return c
	})
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

// leakyGet sends a GET through c and never closes the body. line is where it sends.
func leakyGet(c *http.Client, url string) (status int, line string, err error) {
	line = lineOf()
	resp, err := c.Get(url)
	if err != nil {
		return 0, line, err
	}
	return resp.StatusCode, line, nil
}

func TestUpstreamRoutedByName(t *testing.T) {
	env := httpfxtest.New(t)
	payments := env.Upstream("payments", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.TLS == nil || r.ProtoMajor != 2:
			http.Error(w, "want HTTP/2 over TLS, got "+r.Proto, http.StatusBadRequest)
		case r.Host != "payments.internal" || r.URL.Path != "/api/v1/charges":
			http.Error(w, "want payments.internal/api/v1/charges, got "+r.Host+r.URL.Path, http.StatusBadRequest)
		case r.Header.Get("Authorization") != "Bearer sk_live_123" || r.Header.Get("X-Tenant") != "acme":
			http.Error(w, "upstream headers missing", http.StatusBadRequest)
		default:
			io.WriteString(w, `{"id":"ch_1"}`)
		}
	}))
	var billing *Billing
	app := fxtest.New(t,
		fx.Decorate(func(c httpfx.Config) httpfx.Config { // a configuration file's entry
			c.Upstreams = map[string]httpfx.UpstreamConfig{"payments": {Headers: map[string]string{"X-Tenant": "acme"}}}
			return c
		}),
		env.Module(httpfx.Module, paymentsModule),
		fx.Populate(&billing),
	)
	defer app.RequireStart().RequireStop()

	if id, err := billing.Charge(context.Background(), 7); err != nil || id != "ch_1" {
		t.Fatalf("Charge = %q, %v; want ch_1", id, err)
	}
	reqs := payments.Requests()
	if len(reqs) != 1 {
		t.Fatalf("payments received %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Method != http.MethodPost || r.URL.String() != "https://payments.internal/api/v1/charges" ||
		r.Header.Get("Authorization") != "Bearer sk_live_123" || string(r.Body) != `{"amount":7}` {
		t.Errorf("recorded %+v, want the real request", r)
	}
	s := r.String()
	for _, secret := range []string{"sk_live_123", "acme", "Api-Version: 2"} { // set by the upstream's configuration
		if strings.Contains(s, secret) {
			t.Errorf("String() shows %q:\n%s", secret, s)
		}
	}
	if !strings.Contains(s, "Authorization: [redacted]") || !strings.Contains(s, "X-Tenant: [redacted]") {
		t.Errorf("String() does not redact the credentials:\n%s", s)
	}
}

func TestHostRoutes(t *testing.T) {
	env := httpfxtest.New(t)
	any := env.Host("search.internal", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "any %s %s %s", r.Proto, r.Host, r.URL.RequestURI())
	}))
	port := env.Host("Search.Internal:8443", okHandler("8443"))
	loopback := httptest.NewServer(okHandler("mine")) // the test's own server is reached as is
	defer loopback.Close()
	var client *http.Client
	app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
	defer app.RequireStart().RequireStop()

	for _, tt := range []struct{ give, want string }{
		{"http://search.internal/q?x=1", "any HTTP/1.1 search.internal /q?x=1"},
		{"https://SEARCH.internal/q", "any HTTP/2.0 SEARCH.internal /q"},
		{"http://search.internal:8080/", "any HTTP/1.1 search.internal:8080 /"},
		{"https://search.internal:8443/", "8443"},
		{loopback.URL, "mine"},
	} {
		if got, err := get(client, tt.give); err != nil || got != tt.want {
			t.Errorf("GET %s = %q, %v; want %q", tt.give, got, err, tt.want)
		}
	}
	if n, m := len(any.Requests()), len(port.Requests()); n != 3 || m != 1 {
		t.Errorf("servers received %d and %d requests, want 3 and 1", n, m)
	}
}

func TestUnclosedBodyFailsNamingTheLine(t *testing.T) {
	var line string
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Host("search.internal", okHandler("ok"))
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module, drainTimeout(50*time.Millisecond)), fx.Populate(&client))
		defer app.RequireStart().RequireStop()

		var err error
		if _, line, err = leakyGet(client, "http://user:pw@search.internal/a/b?token=t1&x=2"); err != nil {
			t.Errorf("GET: %v", err)
		}
	})
	if len(errs) != 2 || !strings.Contains(errs[0], "cut 1 in-flight request") {
		t.Fatalf("reported %q; want the stop's cut, then the body", errs)
	}
	want := "httpfxtest: GET http://search.internal/a/b: response body never closed nor read to EOF; httpfx cut it at stop"
	if !strings.HasPrefix(errs[1], want) || !strings.Contains(errs[1], "\tsent at "+line+" in httpfxtest_test.leakyGet\n") ||
		!strings.Contains(errs[1], "called from env_test.go:") {
		t.Errorf("reported\n%s\nwant %q, sent at %s", errs[1], want, line)
	}
	if strings.Contains(errs[1], "pw") || strings.Contains(errs[1], "t1") {
		t.Errorf("the report shows credentials: %s", errs[1])
	}
}

func TestUnstoppedAppFails(t *testing.T) {
	var line string
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Host("search.internal", okHandler("ok"))
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
		app.RequireStart() // and never stopped

		_, line, _ = leakyGet(client, "https://search.internal/")
	})
	if len(errs) != 2 || !strings.Contains(errs[0], "sent at "+line) || strings.Contains(errs[0], "cut") ||
		!strings.Contains(errs[1], "the app was started and never stopped") {
		t.Fatalf("reported %q; want the body sent at %s, then the missing stop", errs, line)
	}
}

func TestClosingComponentPasses(t *testing.T) {
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Upstream("payments", okHandler(`{"id":"ch_1"}`))
		env.Host("other.internal", okHandler("ok"))
		var billing *Billing
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing, &client))
		defer app.RequireStart().RequireStop()

		if _, err := billing.Charge(context.Background(), 1); err != nil {
			t.Errorf("Charge: %v", err)
		}
		// Read to EOF without Close: the connection is free, as for net/http.
		resp, err := client.Get("https://other.internal/")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		io.ReadAll(resp.Body)
		// A body without content is not tracked.
		resp, err = client.Head("http://other.internal/")
		if err != nil || resp.Body != http.NoBody {
			t.Errorf("HEAD: %v, %T", err, resp.Body)
		}
	})
	if len(errs) != 0 {
		t.Fatalf("reported %q, want nothing", errs)
	}
}

func TestParallelSubtestsAreIsolated(t *testing.T) {
	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			env := httpfxtest.New(t)
			payments := env.Upstream("payments", okHandler(fmt.Sprintf(`{"id":"ch_%d"}`, i)))
			var billing *Billing
			app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing))
			defer app.RequireStart().RequireStop()

			var wg sync.WaitGroup
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if id, err := billing.Charge(context.Background(), i); err != nil || id != fmt.Sprintf("ch_%d", i) {
						t.Errorf("Charge = %q, %v; want ch_%d", id, err, i)
					}
				}()
			}
			wg.Wait()
			for _, r := range payments.Requests() {
				if want := fmt.Sprintf(`{"amount":%d}`, i); string(r.Body) != want {
					t.Errorf("received %s, want %s", r.Body, want)
				}
			}
			if n := len(payments.Requests()); n != 16 {
				t.Errorf("received %d requests, want 16", n)
			}
		})
	}
	// A leaky test beside them reports its own body only.
	t.Run("leaky", func(t *testing.T) {
		t.Parallel()
		errs := runFake(t, func(t *fakeT) {
			env := httpfxtest.New(t)
			env.Upstream("payments", okHandler("ok"))
			var billing *Billing
			app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing))
			defer app.RequireStart().RequireStop()
			billing.Healthy(context.Background())
		})
		if len(errs) != 1 || !strings.Contains(errs[0], "GET https://payments.internal/api/health") {
			t.Errorf("reported %q, want its own body", errs)
		}
	})
}

func TestDrainAndErrClosedAsInProduction(t *testing.T) {
	env := httpfxtest.New(t)
	env.Host("other.internal", okHandler("ok"))
	started, release := make(chan struct{}), make(chan struct{})
	env.Upstream("payments", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first,")
		w.(http.Flusher).Flush()
		close(started)
		<-release
		io.WriteString(w, "last")
	}))
	var params struct {
		fx.In
		Client   *http.Client
		Payments *http.Client `name:"payments"`
		Stats    *httpfx.Stats
	}
	app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&params))
	app.RequireStart()

	type result struct {
		body string
		err  error
	}
	streamed := make(chan result, 1)
	go func() {
		b, err := get(params.Payments, "stream")
		streamed <- result{b, err}
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()

	// Once stop has begun, every new request fails with ErrClosed, before anything is sent.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := get(params.Client, "https://other.internal/")
		if errors.Is(err, httpfx.ErrClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ErrClosed while stopping; last error %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := get(params.Payments, "again"); !errors.Is(err, httpfx.ErrClosed) {
		t.Errorf("upstream client after stop: %v, want ErrClosed", err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("stop returned %v before the body in flight was read", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if r := <-streamed; r.err != nil || r.body != "first,last" {
		t.Errorf("body in flight = %q, %v; want it whole", r.body, r.err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("stop: %v", err)
	}
	if s := params.Stats.Snapshot(); s.Cut != 0 || s.InFlight != 0 || s.ConnsOpen != 0 {
		t.Errorf("after stop: %+v", s)
	}
}

func TestTimeoutsHold(t *testing.T) {
	env := httpfxtest.New(t)
	env.Upstream("payments", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	var payments *http.Client
	app := fxtest.New(t, env.Module(httpfx.Module,
		httpfx.Upstream("payments", httpfx.UpstreamConfig{BaseURL: "https://payments.internal/", Timeout: 50 * time.Millisecond}),
		fx.Populate(fx.Annotate(&payments, fx.ParamTags(`name:"payments"`))),
	))
	defer app.RequireStart().RequireStop()

	began := time.Now()
	_, err := get(payments, "slow")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want a timeout", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("the timeout took %v", d)
	}
}

func TestUpgradedStreamStaysWritable(t *testing.T) {
	env := httpfxtest.New(t)
	env.Host("echo.internal", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		rw.Flush()
		line, _ := rw.ReadString('\n')
		rw.WriteString("echo: " + line)
		rw.Flush()
	}))
	var client *http.Client
	app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
	defer app.RequireStart().RequireStop()

	req, _ := http.NewRequest(http.MethodGet, "http://echo.internal/", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rw, ok := resp.Body.(io.ReadWriter)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		t.Fatalf("status %d, body %T: want a writable 101 stream", resp.StatusCode, resp.Body)
	}
	io.WriteString(rw, "hi\n")
	if line, err := bufio.NewReader(rw).ReadString('\n'); err != nil || line != "echo: hi\n" {
		t.Errorf("read %q, %v", line, err)
	}
}

func TestUnroutedRequestFails(t *testing.T) {
	var reqErr error
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
		defer app.RequireStart().RequireStop()
		_, reqErr = get(client, "https://elsewhere.example/x?secret=s")
	})
	want := "httpfxtest: no route for GET https://elsewhere.example/x: "
	if reqErr == nil || !strings.Contains(reqErr.Error(), want) {
		t.Errorf("request error %v, want %q", reqErr, want)
	}
	if len(errs) != 1 || !strings.HasPrefix(errs[0], want) {
		t.Errorf("reported %q, want %q", errs, want)
	}
}

func TestRouteConflictFails(t *testing.T) {
	var reqErr error
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Upstream("payments", okHandler(`{"id":"a"}`))
		env.Host("payments.internal", okHandler("b"))
		var billing *Billing
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module, paymentsModule), fx.Populate(&billing, &client))
		defer app.RequireStart().RequireStop()
		billing.Charge(context.Background(), 1)
		_, reqErr = get(client, "https://payments.internal/")
	})
	want := `payments.internal:443 is routed two ways (upstream "payments" over https, and host "payments.internal" over https)`
	if reqErr == nil || !strings.Contains(reqErr.Error(), want) || len(errs) != 1 || !strings.Contains(errs[0], want) {
		t.Errorf("request error %v, reported %q; want %q", reqErr, errs, want)
	}
}

func TestRecordsWhatTheHandlerReadsAfterExpectContinue(t *testing.T) {
	env := httpfxtest.New(t)
	s := env.Host("upload.internal", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	var client *http.Client
	app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
	defer app.RequireStart().RequireStop()

	req, _ := http.NewRequest(http.MethodPut, "http://upload.internal/f", strings.NewReader("password=p&name=n"))
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r := s.Requests()[0]
	if string(r.Body) != "password=p&name=n" {
		t.Errorf("recorded body %q", r.Body)
	}
	if got := r.String(); !strings.HasSuffix(got, "\n\npassword=[redacted]&name=n") {
		t.Errorf("String() = %s", got)
	}
}

func TestMisuseFails(t *testing.T) {
	env := httpfxtest.New(t)
	env.Upstream("payments", okHandler("ok"))
	for _, tt := range []struct {
		name string
		give []fx.Option
		want string
	}{
		{"httpfx outside", []fx.Option{httpfx.Module, env.Module(paymentsModule)}, "httpfx.Module must be among the options given to Env.Module"},
		{"no such upstream", []fx.Option{env.Module(httpfx.Module)}, `httpfxtest: upstream "payments" is routed but the app has no client of that name`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			app := fx.New(append(tt.give, fx.NopLogger)...)
			if err := app.Err(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("fx.New: %v, want %q", err, tt.want)
			}
		})
	}
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Module(httpfx.Module)
		env.Host("late.internal", okHandler("ok"))
	})
	if len(errs) != 1 || !strings.Contains(errs[0], "httpfxtest: Host(\"late.internal\") after Module") {
		t.Errorf("reported %q", errs)
	}
}

// A body that httpfx closed because the request's Timeout expired was still never closed by
// the component: it is reported, and the report says httpfx closed it.
func TestBodyClosedByTimeoutIsReported(t *testing.T) {
	var line string
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Host("slow.internal", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}))
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module, fx.Decorate(func(c httpfx.Config) httpfx.Config {
			c.Timeout = 100 * time.Millisecond
			return c
		})), fx.Populate(&client))
		defer app.RequireStart().RequireStop()
		if _, line, _ = leakyGet(client, "http://slow.internal/x"); line == "" {
			t.Errorf("no line")
		}
		time.Sleep(300 * time.Millisecond) // past the Timeout: httpfx closes the body
	})
	want := "httpfxtest: GET http://slow.internal/x: response body never closed nor read to EOF; httpfx ended the request when its timeout expired"
	if len(errs) != 1 || !strings.HasPrefix(errs[0], want) || !strings.Contains(errs[0], "sent at "+line) {
		t.Fatalf("reported %q; want one report starting %q, sent at %s", errs, want, line)
	}
}

// An app started and never stopped is reported even when it holds no connection, and its
// client is stopped, so that no goroutine of httpfx outlives the test.
func TestUnstoppedIdleAppFails(t *testing.T) {
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		app := fxtest.New(t, env.Module(httpfx.Module))
		app.RequireStart() // and never stopped
	})
	if len(errs) != 1 || !strings.Contains(errs[0], "the app was started and never stopped") {
		t.Fatalf("reported %q; want the missing stop", errs)
	}
}

// A response with no body to read (HEAD, 204, Content-Length: 0) is no leak, over HTTP/1.1 and
// HTTP/2 alike: the same rule as httpfx's own, by the response and not by its Body's type.
func TestNoBodyIsNoLeakOnEitherProtocol(t *testing.T) {
	for _, scheme := range []string{"http", "https"} { // https is HTTP/2
		for _, tt := range []struct {
			give   string
			method string
			path   string
		}{
			{"HEAD", http.MethodHead, "/"},
			{"204", http.MethodGet, "/empty"},
			{"Content-Length: 0", http.MethodGet, "/zero"},
		} {
			t.Run(scheme+"/"+tt.give, func(t *testing.T) {
				errs := runFake(t, func(t *fakeT) {
					env := httpfxtest.New(t)
					env.Host("search.internal", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						switch r.URL.Path {
						case "/empty":
							w.WriteHeader(http.StatusNoContent)
						case "/zero":
							w.Header().Set("Content-Length", "0")
						default:
							io.WriteString(w, "body")
						}
					}))
					var client *http.Client
					app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
					defer app.RequireStart().RequireStop()
					req, _ := http.NewRequest(tt.method, scheme+"://search.internal"+tt.path, nil)
					resp, err := client.Do(req)
					if err != nil {
						t.Errorf("%s: %v", tt.give, err)
						return
					}
					_ = resp // the body is never closed
				})
				if len(errs) != 0 {
					t.Errorf("reported %q; want nothing: the response has no body", errs)
				}
			})
		}
	}
}

// A leaked body fails the test at once with its file:line: in test mode the app's drain is
// bounded (a second by default), not Config.DrainTimeout's 10s.
func TestLeakFailsFast(t *testing.T) {
	var line string
	began := time.Now()
	errs := runFake(t, func(t *fakeT) {
		env := httpfxtest.New(t)
		env.Host("search.internal", okHandler("ok"))
		var client *http.Client
		app := fxtest.New(t, env.Module(httpfx.Module), fx.Populate(&client))
		defer app.RequireStart().RequireStop()
		_, line, _ = leakyGet(client, "http://search.internal/x")
	})
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("the leak was reported after %v; want the test mode's bound of 1s", took)
	}
	if len(errs) != 2 || !strings.Contains(errs[1], "sent at "+line) {
		t.Errorf("reported %q; want the stop's cut, then the body sent at %s", errs, line)
	}
}
