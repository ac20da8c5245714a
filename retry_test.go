package httpfx_test

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
	"testing/iotest"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
)

// flakyServer is a raw server that resets the first connection of every failEvery, right
// after reading a request from it, before any response: the failure of an upstream that goes
// away (a restart, a crash) with the request on the wire. It counts the requests it read, and
// the request ids it answered.
type flakyServer struct {
	*rawServer
	conns    atomic.Int64
	read     atomic.Int64
	mu       sync.Mutex
	answered map[string]int
}

// newFlakyServer resets every connection while fail reports true for its number (1, 2, …).
func newFlakyServer(t *testing.T, fail func(conn int64) bool) *flakyServer {
	f := &flakyServer{answered: map[string]int{}}
	f.rawServer = newRawServer(t, "127.0.0.1:0", func(c net.Conn) {
		n := f.conns.Add(1)
		rawHTTP(func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
			f.read.Add(1)
			if fail(n) {
				resetConn(c)
				return false
			}
			f.mu.Lock()
			f.answered[req.Header.Get("X-Request-Id")]++
			f.mu.Unlock()
			return rawWriteOK(c, "ok")
		})(c)
	})
	return f
}

// Which requests are sent again after their connection was reset under them: the safe ones
// (an idempotent method, or an idempotency key) whose body can be sent again, unless they or
// their client opt out.
func TestRetryOnlySafeRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give      string
		method    string
		header    string // set to "1", if any
		body      io.Reader
		noRetry   bool // WithoutRetry
		attempts  int  // Config.Retry.MaxAttempts
		wantRetry bool
	}{
		{give: "GET", method: "GET", attempts: 3, wantRetry: true},
		{give: "PUT with a rewindable body", method: "PUT", body: strings.NewReader("x"), attempts: 3, wantRetry: true},
		{give: "POST", method: "POST", body: strings.NewReader("x"), attempts: 3},
		{give: "POST with an Idempotency-Key", method: "POST", header: "Idempotency-Key", body: strings.NewReader("x"), attempts: 3, wantRetry: true},
		{give: "POST with an X-Idempotency-Key", method: "POST", header: "X-Idempotency-Key", body: strings.NewReader("x"), attempts: 3, wantRetry: true},
		{give: "PUT with a small body httpfx keeps as it is sent", method: "PUT", body: iotest.OneByteReader(strings.NewReader("x")), attempts: 3, wantRetry: true},
		{give: "PUT with a body past MaxBufferBytes", method: "PUT", body: iotest.OneByteReader(strings.NewReader(strings.Repeat("x", 100<<10))), attempts: 3},
		{give: "GET WithoutRetry", method: "GET", noRetry: true, attempts: 3},
		{give: "GET, MaxAttempts 1", method: "GET", attempts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			srv := newFlakyServer(t, func(n int64) bool { return n == 1 })
			app, g := relApp(t, func(c *httpfx.Config) { c.Retry.MaxAttempts = tt.attempts })
			defer app.RequireStop()
			ctx := context.Background()
			if tt.noRetry {
				ctx = httpfx.WithoutRetry(ctx)
			}
			req, _ := http.NewRequestWithContext(ctx, tt.method, srv.URL(), tt.body)
			if tt.header != "" {
				req.Header.Set(tt.header, "1")
			}
			body, _, err := send(g.Client, req)
			if got := err == nil; got != tt.wantRetry {
				t.Fatalf("got %q, %v; want a retry: %v", body, err, tt.wantRetry)
			}
			s := g.Stats.Snapshot()
			wantRetries := int64(0)
			if tt.wantRetry {
				wantRetries = 1
			}
			if s.Retries != wantRetries || srv.read.Load() != 1+wantRetries {
				t.Errorf("Retries %d, server read %d requests; want %d retries", s.Retries, srv.read.Load(), wantRetries)
			}
		})
	}
}

// Statuses are retried only when listed; Retry-After (seconds or an HTTP date) sets the wait,
// and one longer than RetryAfterMax is not waited for: the response is returned.
func TestRetryStatuses(t *testing.T) {
	t.Parallel()
	date := func(d time.Duration) func() string { // as the response is written: a date has whole seconds
		return func() string { return time.Now().Add(d).UTC().Format(http.TimeFormat) }
	}
	secs := func(s string) func() string { return func() string { return s } }
	tests := []struct {
		give       string
		status     int
		retryAfter func() string
		statuses   []int
		ignore     bool          // RetryAfterMax 0: Retry-After ignored
		want       int           // the status the caller gets
		minWait    time.Duration // at least, before the retry
	}{
		{give: "502, not listed", status: 502, want: 502},
		{give: "502, listed", status: 502, statuses: []int{502}, want: 200},
		{give: "503 with Retry-After in seconds", status: 503, retryAfter: secs("1"), statuses: []int{503}, want: 200, minWait: time.Second},
		{give: "429 with Retry-After as a date", status: 429, retryAfter: date(2 * time.Second), statuses: []int{429}, want: 200, minWait: 500 * time.Millisecond},
		{give: "503 with Retry-After past the cap", status: 503, retryAfter: secs("10"), statuses: []int{503}, want: 503},
		{give: "503 with Retry-After, RetryAfterMax 0 ignores it", status: 503, retryAfter: secs("10"), statuses: []int{503}, ignore: true, want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int64
			u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					if tt.retryAfter != nil {
						w.Header().Set("Retry-After", tt.retryAfter())
					}
					w.WriteHeader(tt.status)
					io.WriteString(w, "not now")
					return
				}
				io.WriteString(w, "ok")
			}))
			app, g := relApp(t, func(c *httpfx.Config) {
				c.Retry.Statuses = tt.statuses
				if tt.ignore {
					c.Retry.RetryAfterMax = 0
				}
			})
			defer app.RequireStop()
			began := time.Now()
			resp, err := g.Client.Get(u.URL)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want || time.Since(began) < tt.minWait {
				t.Errorf("status %d after %v; want %d after %v at least", resp.StatusCode, time.Since(began), tt.want, tt.minWait)
			}
		})
	}
}

// An upstream that fails every request, with a listed status or by resetting every
// connection, while 16 callers send for a few seconds: the retries stay within the budget
// (20% of the requests plus 10 a second), nothing flushes the pool, and a status failure's
// connections are reused.
func TestRetryStorm(t *testing.T) {
	t.Parallel()
	for _, failure := range []string{"503", "reset"} {
		t.Run(failure, func(t *testing.T) {
			t.Parallel()
			var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
			})
			url := ""
			if failure == "503" {
				url = testutil.NewServer(t, h).URL
			} else {
				url = newFlakyServer(t, func(int64) bool { return true }).URL()
			}
			app, g := relApp(t, func(c *httpfx.Config) { c.Retry.Statuses = []int{503} })
			const callers, d = 16, 2 * time.Second
			var sent atomic.Int64
			var wg sync.WaitGroup
			end := time.Now().Add(d)
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 2000 && time.Now().Before(end); i++ {
						if resp, err := g.Client.Get(url); err == nil {
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
						sent.Add(1)
						time.Sleep(time.Millisecond)
					}
				}()
			}
			wg.Wait()
			s := g.Stats.Snapshot()
			app.RequireStop()
			secs := d.Seconds() + 1
			if limit := 0.2*float64(sent.Load()) + 10*10 + 10*secs; float64(s.Retries) > limit {
				t.Errorf("%d retries for %d requests: want at most %.0f (20%% and 10 a second over 10s)", s.Retries, sent.Load(), limit)
			}
			if s.BudgetRefused == 0 {
				t.Errorf("the budget refused no retry of %d failing requests", sent.Load())
			}
			if s.CloseIdleIgnored != 0 {
				t.Errorf("the pool was flushed %d times", s.CloseIdleIgnored)
			}
			if failure == "503" && s.ConnsOpened > 2*callers {
				t.Errorf("%d connections for %d callers: the 503s' connections were not reused", s.ConnsOpened, callers)
			}
			t.Logf("%d requests, %d retries, %d refused by the budget, %d connections", sent.Load(), s.Retries, s.BudgetRefused, s.ConnsOpened)
		})
	}
}

// A retry never waits past the request's deadline, nor past stop: the request then fails with
// why, and the drain waited for it, retries included.
func TestRetryBoundedByDeadlineAndStop(t *testing.T) {
	t.Parallel()
	srv := newFlakyServer(t, func(int64) bool { return true })
	app, g := relApp(t, func(c *httpfx.Config) {
		c.Retry.MaxAttempts, c.Retry.Backoff, c.Retry.MaxBackoff = 5, time.Minute, time.Minute // every wait is long
		c.Timeout = 0                                                                          // the caller's deadline alone
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL(), nil)
	began := time.Now()
	if _, _, err := send(g.Client, req); err == nil || time.Since(began) > 5*time.Second {
		t.Errorf("err %v after %v; want a failure at the deadline", err, time.Since(began))
	}
	errs := make(chan error, 1)
	go func() {
		_, _, err := send(g.Client, newGet(t, srv.URL()))
		errs <- err
	}()
	testutil.WaitFor(t, "the request waits to retry", func() bool { return srv.read.Load() >= 2 })
	time.Sleep(20 * time.Millisecond)
	if err := app.Stop(context.Background()); err != nil {
		t.Errorf("stop: %v", err)
	}
	if err := <-errs; !errors.Is(err, httpfx.ErrClosed) {
		t.Errorf("the request waiting to retry at stop: %v, want ErrClosed", err)
	}
}

// Over HTTP/2 too, an attempt stuck past AttemptTimeout is given up and sent again, and Attempt
// tells a round tripper under the client which attempt it sees.
func TestAttemptTimeout(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	u := testutil.NewTLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			<-r.Context().Done() // the first attempt hangs
			return
		}
		io.WriteString(w, "ok")
	}), true)
	var seen []int
	var mu sync.Mutex
	app, g := relApp(t, func(c *httpfx.Config) { c.Retry.AttemptTimeout = 200 * time.Millisecond },
		trustServer(u.Server),
		fx.Decorate(func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				mu.Lock()
				seen = append(seen, httpfx.Attempt(r.Context()))
				mu.Unlock()
				return rt.RoundTrip(r)
			})
		}))
	defer app.RequireStop()
	if body, _, err := send(g.Client, newGet(t, u.URL)); err != nil || body != "ok" {
		t.Fatalf("got %q, %v; want ok after a retry", body, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[1 2]" {
		t.Errorf("attempts seen %v, want [1 2]", seen)
	}
}

// roundTripFunc is a RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A body that streams is never read ahead of the transport, and a request whose producer
// stalls ends at the client's Timeout or at stop's cut: net/http's HTTP/1 transport alone would
// wait in the body's Read for ever.
func TestStalledRequestBodyEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give    string
		method  string
		timeout time.Duration // Config.Timeout; zero: none, stop ends it
		want    error
	}{
		{give: "PUT past Timeout", method: http.MethodPut, timeout: 300 * time.Millisecond, want: context.DeadlineExceeded},
		{give: "POST past Timeout", method: http.MethodPost, timeout: 300 * time.Millisecond, want: context.DeadlineExceeded},
		{give: "PUT cut by stop", method: http.MethodPut, want: httpfx.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			first := make(chan string, 1)
			srv := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				br := bufio.NewReader(r.Body)
				line, _ := br.ReadString('\n')
				first <- line
				io.Copy(io.Discard, br) // the rest never comes: ends when the client gives up
			}))
			app, g := relApp(t, func(c *httpfx.Config) {
				c.Timeout = tt.timeout
				c.DrainTimeout = 200 * time.Millisecond
			})
			pr, pw := io.Pipe()
			defer pw.Close()
			go pw.Write([]byte("first chunk\n")) // then the producer stalls; ends with pw.Close
			req, _ := http.NewRequest(tt.method, srv.URL, pr)
			done := make(chan error, 1)
			go func() {
				resp, err := g.Client.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				done <- err
			}()
			select {
			case line := <-first:
				if line != "first chunk\n" {
					t.Errorf("the server read %q first", line)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server got nothing of the body in 5s: it was read ahead")
			}
			if tt.timeout == 0 {
				if err := app.Stop(context.Background()); err == nil || !strings.Contains(err.Error(), "cut 1") {
					t.Errorf("stop: %v; want it to say it cut the request", err)
				}
			} else {
				defer app.RequireStop()
			}
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Errorf("Do: %v; want %v", err, tt.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Do still blocked 5s after its Timeout or stop")
			}
		})
	}
}
