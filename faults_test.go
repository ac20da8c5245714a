package httpfx_test

// Fault tests: loopback upstreams that misbehave on purpose. Each test fails if the promise it
// names is broken: the caller gets an error instead of a hang, the request leaves the
// in-flight count, the pool stays usable, and stop leaves nothing behind.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// hangBound bounds every wait for something that must not hang. It is generous: on a slow,
// shared machine a test only takes longer, it does not fail.
const hangBound = 10 * time.Second

// send sends req through c and reads the whole body. stage says where the error came from:
// "do" (no response) or "body" (reading the response body).
func send(c *http.Client, req *http.Request) (body, stage string, err error) {
	resp, err := c.Do(req)
	if err != nil {
		return "", "do", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return string(b), "body", err
	}
	return string(b), "", nil
}

func newGet(t testing.TB, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// An upstream restarts on the same address while the pool holds keep-alive connections to
// its old process.
//
// net/http retries a request that fails on a reused connection before any response byte
// arrived only if the request can be replayed: GET, HEAD, OPTIONS, TRACE, or a request with an
// Idempotency-Key header, and in every case a body that is nil, NoBody or rewindable through
// GetBody. A POST whose body cannot be rewound is not retried, because the old server may have
// acted on it.
//
// When the old process simply dies, the kernel closes its sockets and the client usually
// notices before it reuses the connection, so whether a request meets a dead connection is a
// race ("hard restart" accepts either outcome for the POST, but no hang). "request crosses
// the restart" makes it deterministic: the old process stops listening and its connections
// die the moment the next request arrives on them (read in full, closed without a byte of
// response), which is what a request crossing a restart or a keep-alive timeout sees.
func TestUpstreamRestartOnSameAddress(t *testing.T) {
	t.Run("hard restart", func(t *testing.T) {
		const pooled = 4
		warm := testutil.NewGate()
		defer warm.Release()
		old := newRawServer(t, "127.0.0.1:0", rawHTTP(func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
			if req.URL.Path == "/warm" {
				warm.Wait()
			}
			return rawWriteOK(c, "old")
		}))
		app, g := relApp(t, nil)

		// Open 4 keep-alive connections: the old server holds 4 requests at once.
		var wg sync.WaitGroup
		for range pooled {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s, err := get(g.Client, old.URL()+"/warm"); err != nil || s != "old" {
					t.Errorf("warm-up: %q, %v", s, err)
				}
			}()
		}
		testutil.WaitFor(t, "4 warm-up requests reach the old server", func() bool { return warm.Waiting.Load() == pooled })
		warm.Release()
		wg.Wait()
		if s := g.Stats.Snapshot(); s.ConnsOpen != pooled {
			t.Fatalf("pool holds %d connections, want %d kept alive", s.ConnsOpen, pooled)
		}

		// The old process goes away with its listener and connections; a new one listens on
		// the same address at once.
		old.Close()
		var posts atomic.Int64
		fresh := newRawServer(t, old.addr, rawHTTP(func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
			if req.Method == http.MethodPost {
				posts.Add(1)
			}
			return rawWriteOK(c, "new")
		}))

		// Idempotent requests, sent at once, all succeed: on a new connection, or retried by
		// net/http if they raced into a dead pooled one.
		errs := make(chan error, 2*pooled)
		for range 2 * pooled {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := get(g.Client, fresh.URL())
				if err == nil && s != "new" {
					err = fmt.Errorf("body %q, want new", s)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		relWithin(t, hangBound, "GETs after the restart", wg.Wait)
		close(errs)
		for err := range errs {
			t.Errorf("GET after the restart: %v", err)
		}

		// A POST that cannot be replayed succeeds on a live connection, or fails with an
		// error if it met a dead one; it never hangs.
		var body string
		var err error
		relWithin(t, hangBound, "a POST after the restart", func() {
			body, _, err = send(g.Client, unreplayablePost(t, fresh.URL()))
		})
		switch {
		case err != nil:
			t.Logf("POST after the restart failed, as it may when it meets a dead connection: %v", err)
			if posts.Load() != 0 {
				t.Errorf("the new server got the failed POST %d times, want 0", posts.Load())
			}
		case body != "new":
			t.Errorf("POST after the restart: body %q, want new", body)
		}
		if s := g.Stats.Snapshot(); s.InFlight != 0 {
			t.Errorf("in flight = %d after the restart, want 0", s.InFlight)
		}
		app.RequireStop()
		fresh.requireClientGone(t)
	})

	t.Run("request crosses the restart", func(t *testing.T) {
		tests := []struct {
			name   string
			give   func(t *testing.T, url string) *http.Request
			wantOK bool // replayed by net/http on a new connection to the new server
		}{
			{"GET is retried", func(t *testing.T, url string) *http.Request { return newGet(t, url) }, true},
			{"POST with a body it cannot rewind fails", unreplayablePost, false},
			{"POST with GetBody and Idempotency-Key is retried", func(t *testing.T, url string) *http.Request {
				req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("payload")) // sets GetBody
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Idempotency-Key", "k-1")
				return req
			}, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var dead atomic.Bool
				var swallowed atomic.Int64
				old := newRawServer(t, "127.0.0.1:0", rawHTTP(func(c net.Conn, _ *bufio.Reader, _ *http.Request) bool {
					if dead.Load() {
						swallowed.Add(1)
						return false // the request was read in full; close without answering
					}
					return rawWriteOK(c, "old")
				}))
				app, g := relApp(t, nil)
				if s := mustGet(t, g.Client, old.URL()); s != "old" {
					t.Fatalf("warm-up body %q", s)
				}
				if s := g.Stats.Snapshot(); s.ConnsOpen != 1 {
					t.Fatalf("pool holds %d connections, want 1 kept alive", s.ConnsOpen)
				}

				old.closeListener()
				dead.Store(true)
				var served atomic.Int64
				fresh := newRawServer(t, old.addr, rawHTTP(func(c net.Conn, _ *bufio.Reader, _ *http.Request) bool {
					served.Add(1)
					return rawWriteOK(c, "new")
				}))

				var body string
				var err error
				relWithin(t, hangBound, "the request across the restart", func() {
					body, _, err = send(g.Client, tt.give(t, fresh.URL()))
				})
				if n := swallowed.Load(); n != 1 {
					t.Fatalf("the dead connection got %d requests, want 1: the test did not exercise a dead pooled connection", n)
				}
				s := g.Stats.Snapshot()
				if tt.wantOK {
					if err != nil || body != "new" || served.Load() != 1 {
						t.Errorf("got %q, %v, new server served %d; want new, retried once on a new connection", body, err, served.Load())
					}
					if s.Failed != 0 {
						t.Errorf("failed = %d, want 0", s.Failed)
					}
				} else {
					if err == nil {
						t.Fatalf("got %q and no error; want the POST to fail on the dead connection", body)
					}
					t.Logf("unreplayable POST on a dead connection: %v", err)
					if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "connection reset") {
						t.Errorf("error %q does not say the server closed the connection", err)
					}
					if served.Load() != 0 {
						t.Errorf("the new server got the POST %d times, want 0: it must not be sent twice", served.Load())
					}
					if s.Failed != 1 {
						t.Errorf("failed = %d, want 1", s.Failed)
					}
				}
				if s.InFlight != 0 || s.Requests != 2 {
					t.Errorf("stats = %+v, want 2 requests, none in flight", s)
				}
				// The pool is usable: the dead connection is gone, the next request is fine.
				if s := mustGet(t, g.Client, fresh.URL()); s != "new" {
					t.Errorf("GET after: body %q, want new", s)
				}
				app.RequireStop()
				old.requireClientGone(t)
				fresh.requireClientGone(t)
			})
		}
	})
}

// unreplayablePost is a POST whose body net/http cannot rewind: no GetBody, no
// Idempotency-Key.
func unreplayablePost(t *testing.T, url string) *http.Request {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	req.GetBody = nil
	return req
}

// A response that breaks off or is malformed returns an error to the caller, from Do or from
// reading the body; the request leaves the in-flight count as failed; and the pool stays
// usable, for the same host and for another.
func TestBrokenResponses(t *testing.T) {
	healthy := testutil.NewServer(t, okHandler())
	write := func(s string) rawHandler {
		return func(c net.Conn, _ *bufio.Reader, _ *http.Request) bool {
			io.WriteString(c, s)
			return false
		}
	}
	tests := []struct {
		name      string
		give      rawHandler
		config    func(*httpfx.Config)
		wantStage string // where the caller sees the error: "do", "body", or "either"
		wantErr   string // in the error's text; empty: any error
	}{
		{
			name: "connection reset mid-body",
			give: func(c net.Conn, _ *bufio.Reader, _ *http.Request) bool {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
				resetConn(c)
				return false
			},
			// The RST may overtake the bytes before them: the kernel then reports the reset
			// before the headers are read.
			wantStage: "either",
		},
		{
			name:      "server closes after the headers",
			give:      write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
			wantStage: "body",
			wantErr:   "unexpected EOF",
		},
		{
			name:      "truncated chunked body",
			give:      write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
			wantStage: "body",
			wantErr:   "unexpected EOF",
		},
		{
			name:      "malformed status line",
			give:      write("HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok"),
			wantStage: "do",
			wantErr:   "malformed HTTP status code",
		},
		{
			name:      "not HTTP at all",
			give:      write("SSH-2.0-OpenSSH_9.6\r\n\r\n"),
			wantStage: "do",
			wantErr:   "malformed HTTP response",
		},
		{
			name:      "server closes before the status line",
			give:      write(""),
			wantStage: "do",
			wantErr:   "EOF",
		},
		{
			name:      "oversize response headers",
			give:      write("HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\nContent-Length: 2\r\n\r\nok"),
			config:    func(c *httpfx.Config) { c.MaxResponseHeaderBytes = 1 << 10 },
			wantStage: "do",
			wantErr:   "server response headers exceeded 1024 bytes",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := newRawServer(t, "127.0.0.1:0", rawHTTP(func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
				if req.URL.Path == "/ok" {
					return rawWriteOK(c, "ok")
				}
				return tt.give(c, br, req)
			}))
			app, g := relApp(t, tt.config)

			var body, stage string
			var err error
			relWithin(t, hangBound, "the broken request", func() {
				body, stage, err = send(g.Client, newGet(t, raw.URL()+"/broken"))
			})
			if err == nil {
				t.Fatalf("got body %q and no error, want an error", body)
			}
			t.Logf("error from %s: %v", stage, err)
			if tt.wantStage != "either" && stage != tt.wantStage {
				t.Errorf("error came from %s, want from %s", stage, tt.wantStage)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Failed != 1 || s.Requests != 1 {
				t.Errorf("stats = %+v, want 1 request, failed, none in flight", s)
			}

			// The pool is usable: for the same host (the broken connection is not reused) and
			// for another.
			if s := mustGet(t, g.Client, raw.URL()+"/ok"); s != "ok" {
				t.Errorf("same host after the fault: body %q, want ok", s)
			}
			if s := mustGet(t, g.Client, healthy.URL); s != "ok" {
				t.Errorf("another host after the fault: body %q, want ok", s)
			}
			if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Failed != 1 || s.Requests != 3 {
				t.Errorf("stats = %+v, want 3 requests, 1 failed, none in flight", s)
			}
			app.RequireStop() // nothing left to cut
			testutil.WaitFor(t, "the healthy server sees its connection closed", func() bool { return healthy.Open() == 0 })
			raw.requireClientGone(t)
		})
	}
	healthy.RequireNoConns(t)
}

// A slow or absent upstream ends in an error within the configured bound: headers that never
// come (ResponseHeaderTimeout), a body that stalls (the request's deadline, or Config.Timeout),
// a port nobody listens on (the dial fails).
func TestSlowUpstream(t *testing.T) {
	noHeaders := newRawServer(t, "127.0.0.1:0", rawHTTP(func(c net.Conn, _ *bufio.Reader, _ *http.Request) bool {
		awaitClientClose(c)
		return false
	}))
	stalls := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the client closed the connection
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := "http://" + ln.Addr().String()
	ln.Close()

	tests := []struct {
		name     string
		url      string
		config   func(*httpfx.Config)
		deadline time.Duration // of the request's context; 0 means none
		want     func(error) bool
		wantText string
	}{
		{
			name:   "headers never come",
			url:    noHeaders.URL(),
			config: func(c *httpfx.Config) { c.Timeout, c.ResponseHeaderTimeout = 0, 200*time.Millisecond },
			want: func(err error) bool {
				var ne net.Error
				return errors.As(err, &ne) && ne.Timeout() && errors.Is(err, context.DeadlineExceeded) &&
					strings.Contains(err.Error(), "Config.ResponseHeaderTimeout (200ms) waiting for the response headers")
			},
			wantText: "a net.Error timeout naming ResponseHeaderTimeout",
		},
		{
			name:     "body stalls past the request's deadline",
			url:      stalls.URL,
			config:   func(c *httpfx.Config) { c.Timeout = 0 },
			deadline: 300 * time.Millisecond,
			want:     func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
			wantText: "context.DeadlineExceeded",
		},
		{
			name:   "body stalls past Config.Timeout",
			url:    stalls.URL,
			config: func(c *httpfx.Config) { c.Timeout = 300 * time.Millisecond },
			want: func(err error) bool {
				return errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), "Config.Timeout")
			},
			wantText: "context.DeadlineExceeded naming Config.Timeout",
		},
		{
			// Refused at once on loopback; DialTimeout bounds it where packets are dropped.
			name:   "dial to a closed port",
			url:    closedPort,
			config: func(c *httpfx.Config) { c.DialTimeout = time.Second },
			want: func(err error) bool {
				var oe *net.OpError
				return errors.As(err, &oe) && oe.Op == "dial"
			},
			wantText: "a *net.OpError from dial",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, g := relApp(t, tt.config)
			ctx := context.Background()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tt.url, nil)
			var err error
			relWithin(t, hangBound, "the request", func() { _, _, err = send(g.Client, req) })
			if err == nil || !tt.want(err) {
				t.Fatalf("err = %v, want %s", err, tt.wantText)
			}
			t.Logf("error: %v", err)
			if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Failed != 1 {
				t.Errorf("stats = %+v, want 1 failed, none in flight", s)
			}
			app.RequireStop()
		})
	}
	testutil.WaitFor(t, "the stalling server sees its connections closed", func() bool { return stalls.Open() == 0 })
	noHeaders.requireClientGone(t)
}

// A caller that never closes a response body: stop waits for it until the drain bound, cuts
// it, says so in its error and in the summary log line, and leaves no goroutine behind.
func TestStopCutsBodyNeverClosed(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a body nobody reads")
	}))
	core, logs := observer.New(zap.InfoLevel)
	app, g := relApp(t, func(c *httpfx.Config) { c.DrainTimeout = 200 * time.Millisecond }, fx.Supply(zap.New(core)))

	resp, err := g.Client.Get(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	// The caller "never" closes the body: only after the checks, so that a failing check does
	// not leave goroutines for the tests after this one.
	t.Cleanup(func() { resp.Body.Close() })
	if s := g.Stats.Snapshot(); s.InFlight != 1 {
		t.Fatalf("in flight = %d, want 1 until the body is closed", s.InFlight)
	}

	var stopErr error
	relWithin(t, hangBound, "stop", func() { stopErr = app.Stop(context.Background()) })
	if !errors.Is(stopErr, context.DeadlineExceeded) || !strings.Contains(fmt.Sprint(stopErr), "cut 1 in-flight") {
		t.Fatalf("stop: %v; want an error wrapping context.DeadlineExceeded that says 1 was cut", stopErr)
	}
	stopped := logs.FilterMessage("httpfx client stopped").All()
	if len(stopped) != 1 {
		t.Fatalf("%d summary lines, want 1", len(stopped))
	}
	if cut := stopped[0].ContextMap()["cut"]; cut != int64(1) {
		t.Errorf("summary line cut = %v (%T), want 1", cut, cut)
	}
	if s := g.Stats.Snapshot(); s.Cut != 1 || s.ConnsOpen != 0 {
		t.Errorf("stats = %+v, want 1 cut and no connection open", s)
	}
	u.RequireNoConns(t)
}

// A caller that cancels its context while the body is still coming, and neither reads nor
// closes the body, does not hold stop: the request is finished as soon as stop looks at it
// (or by the sampled reap, under traffic), and is not counted as cut.
func TestCancelMidBodyLeavesInFlight(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	// A short drain bound, so that the test fails fast if the request stays in flight.
	app, g := relApp(t, func(c *httpfx.Config) { c.DrainTimeout = time.Second })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.URL, nil)
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if s := g.Stats.Snapshot(); s.InFlight != 1 {
		t.Fatalf("in flight = %d, want 1", s.InFlight)
	}

	cancel()
	var stopErr error
	relWithin(t, hangBound, "stop", func() { stopErr = app.Stop(context.Background()) })
	if stopErr != nil {
		t.Errorf("stop: %v; want nil: the canceled request was no longer in flight", stopErr)
	}

	// A late read fails (net/http reports the cancellation, or the connection it closed for
	// it, depending on timing); it and the close do not count the request out twice.
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after cancel: %v, want context.Canceled or net.ErrClosed", err)
	}
	resp.Body.Close()
	if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Requests != 1 || s.Failed != 1 || s.Cut != 0 {
		t.Errorf("stats = %+v, want 1 request, failed, none in flight, none cut", s)
	}
	u.RequireNoConns(t)
}

// A 101 Switching Protocols stream through the shared client: stop waits for it while it is
// open and it keeps working both ways; past the drain bound, stop cuts it.
func TestSwitchingProtocolsAtStop(t *testing.T) {
	var live atomic.Int64 // hijacked connections whose handler has not returned
	u := testutil.NewServer(t, echoUpgradeHandler(&live))
	open := func(t *testing.T, c *http.Client) (io.ReadWriteCloser, *bufio.Reader) {
		req := newGet(t, u.URL)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "echo")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		stream, ok := resp.Body.(io.ReadWriteCloser)
		if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
			resp.Body.Close()
			t.Fatalf("status %d, body %T; want 101 and an io.ReadWriteCloser", resp.StatusCode, resp.Body)
		}
		t.Cleanup(func() { stream.Close() })
		return stream, bufio.NewReader(stream)
	}
	ping := func(t *testing.T, stream io.Writer, br *bufio.Reader, msg string) {
		t.Helper()
		if _, err := io.WriteString(stream, msg+"\n"); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "echo: "+msg+"\n" {
			t.Fatalf("read %q, %v; want the echo of %q", line, err, msg)
		}
	}

	t.Run("stop waits for the open stream", func(t *testing.T) {
		app, g := relApp(t, nil)
		stream, br := open(t, g.Client)
		ping(t, stream, br, "before stop")

		stopped := make(chan error, 1)
		go func() { stopped <- app.Stop(context.Background()) }()
		testutil.WaitFor(t, "the gate closes", func() bool { return gateClosed(g.Client, u.URL+"/probe") })
		ping(t, stream, br, "while stop waits")
		select {
		case err := <-stopped:
			t.Fatalf("stop returned (%v) while the stream was open", err)
		default:
		}
		if s := g.Stats.Snapshot(); s.InFlight != 1 {
			t.Errorf("in flight = %d while the stream is open, want 1", s.InFlight)
		}
		stream.Close()
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("stop: %v", err)
			}
		case <-time.After(hangBound):
			t.Fatal("stop still waits after the stream closed")
		}
		if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Cut != 0 {
			t.Errorf("stats = %+v, want none in flight, none cut", s)
		}
		testutil.WaitFor(t, "the server's stream handler returns", func() bool { return live.Load() == 0 })
		u.RequireNoConns(t)
	})

	t.Run("past the drain bound the stream is cut", func(t *testing.T) {
		app, g := relApp(t, func(c *httpfx.Config) { c.DrainTimeout = 200 * time.Millisecond })
		stream, br := open(t, g.Client)
		ping(t, stream, br, "before stop")

		var stopErr error
		relWithin(t, hangBound, "stop", func() { stopErr = app.Stop(context.Background()) })
		if !errors.Is(stopErr, context.DeadlineExceeded) || !strings.Contains(fmt.Sprint(stopErr), "cut 1 in-flight") {
			t.Fatalf("stop: %v; want an error wrapping context.DeadlineExceeded that says 1 was cut", stopErr)
		}
		var readErr error
		relWithin(t, hangBound, "a read of the cut stream", func() { _, readErr = br.ReadByte() })
		if readErr == nil {
			t.Error("read of the cut stream succeeded, want an error")
		}
		if _, err := io.WriteString(stream, "after the cut\n"); err == nil {
			t.Error("write to the cut stream succeeded, want an error")
		}
		stream.Close()
		if s := g.Stats.Snapshot(); s.Cut != 1 || s.InFlight != 0 || s.ConnsOpen != 0 {
			t.Errorf("stats = %+v, want 1 cut, none in flight, no connection open", s)
		}
		testutil.WaitFor(t, "the server's stream handler returns", func() bool { return live.Load() == 0 })
		u.RequireNoConns(t)
	})
}

// Stop while many goroutines are still sending: every request either completes or is refused
// with ErrClosed; none is lost and none hangs; once a goroutine saw ErrClosed it sees nothing
// else. Repeated on fresh apps, stopping after a different number of admitted requests each
// time, so that -race sees many interleavings.
func TestStopWhileAdmittingRace(t *testing.T) {
	const iterations, senders, perSender = 20, 32, 16
	u := testutil.NewServer(t, okHandler())
	var totalOK, totalClosed int64
	for i := range iterations {
		app, g := relApp(t, nil)
		stopAfter := int64(i * 23 % (senders * perSender / 2)) // admitted requests before stop: 0 … 255
		deadline := time.Now().Add(hangBound)
		var sent, ok, closed atomic.Int64
		var running atomic.Int64
		errs := make(chan error, senders*perSender)
		var wg sync.WaitGroup
		for range senders {
			wg.Add(1)
			running.Add(1)
			go func() {
				defer wg.Done()
				defer running.Add(-1)
				refused := false
				for n := 0; n < perSender && time.Now().Before(deadline); n++ {
					sent.Add(1)
					body, err := get(g.Client, u.URL)
					switch {
					case errors.Is(err, httpfx.ErrClosed):
						refused = true
						closed.Add(1)
					case err != nil:
						errs <- err
					case body != "ok":
						errs <- fmt.Errorf("body %q, want ok", body)
					case refused:
						errs <- errors.New("a request completed after an earlier one from the same goroutine was refused")
					default:
						ok.Add(1)
					}
				}
			}()
		}
		testutil.WaitFor(t, "requests are admitted", func() bool {
			return g.Stats.Snapshot().Requests >= stopAfter || running.Load() == 0
		})
		var stopErr error
		relWithin(t, hangBound, "stop", func() { stopErr = app.Stop(context.Background()) })
		relWithin(t, hangBound, "the senders", wg.Wait)
		close(errs)
		for err := range errs {
			t.Errorf("iteration %d: %v", i, err)
		}
		if stopErr != nil {
			t.Errorf("iteration %d: stop: %v", i, stopErr)
		}
		s := g.Stats.Snapshot()
		if sent.Load() != ok.Load()+closed.Load() || s.Requests != ok.Load() || s.Rejected != closed.Load() ||
			s.Cut != 0 || s.Failed != 0 || s.InFlight != 0 {
			t.Fatalf("iteration %d: sent %d, completed %d, refused %d; stats %+v; want sent = completed + refused = requests + rejected, none failed or cut",
				i, sent.Load(), ok.Load(), closed.Load(), s)
		}
		totalOK += ok.Load()
		totalClosed += closed.Load()
	}
	t.Logf("%d iterations: %d completed, %d refused with ErrClosed", iterations, totalOK, totalClosed)
	if totalOK == 0 || totalClosed == 0 {
		t.Errorf("%d completed and %d refused over all iterations: stop never met requests in flight", totalOK, totalClosed)
	}
	u.RequireNoConns(t)
}
