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
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// withConfig replaces the module's Config with DefaultConfig changed by edit.
func withConfig(edit func(*httpfx.Config)) fx.Option {
	c := httpfx.DefaultConfig()
	edit(&c)
	return fx.Replace(c)
}

// 64 concurrent callers × 20 requests through the shared client reuse their connections:
// none is closed during the run, and about one is opened per caller.
func TestConnectionReuseUnderConcurrency(t *testing.T) {
	const callers, perCaller = 64, 20
	u := testutil.NewServer(t, okHandler())
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()

	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perCaller {
				if _, err := get(g.Client, u.URL); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	s := g.Stats.Snapshot()
	t.Logf("%d requests, %d connections opened (server accepted %d), reuse ratio %.3f",
		s.Requests, s.ConnsOpened, u.Opened(), s.ReuseRatio())
	if s.Requests != callers*perCaller || s.Failed != 0 {
		t.Errorf("requests = %d, failed = %d; want %d, 0", s.Requests, s.Failed, callers*perCaller)
	}
	if n := u.Closed(); n != 0 {
		t.Errorf("%d connections were closed during the run, want 0: the pool must keep every connection it opened", n)
	}
	if s.ConnsOpen != s.ConnsOpened || s.ConnsOpened != u.Opened() {
		t.Errorf("client counts %d opened / %d open, server %d: want all opened still open", s.ConnsOpened, s.ConnsOpen, u.Opened())
	}
	// net/http may dial extra connections in a cold burst: a freed connection goes to a caller
	// whose dial is still in flight, and that dial still completes. How many depends on how
	// slow dials are against requests (more on a loaded machine); what matters is that each
	// is kept by the pool, as checked above, so this bound is loose.
	if s.ConnsOpened < 1 || s.ConnsOpened > 2*callers {
		t.Errorf("connections opened = %d, want close to %d", s.ConnsOpened, callers)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// streamHandler writes a first chunk, waits at g, then streams the rest. It answers /probe
// at once.
func streamHandler(g *testutil.Gate, chunks int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			return
		}
		fl := w.(http.Flusher)
		io.WriteString(w, "start;")
		fl.Flush()
		g.Wait()
		for i := range chunks {
			fmt.Fprintf(w, "%d;", i)
			fl.Flush()
		}
	})
}

func wantStream(chunks int) string {
	var b strings.Builder
	b.WriteString("start;")
	for i := range chunks {
		fmt.Fprintf(&b, "%d;", i)
	}
	return b.String()
}

// Stop waits for 50 response bodies that are still being streamed; all complete, none is cut.
func TestStopDrainsStreamingBodies(t *testing.T) {
	const n, chunks = 50, 20
	release := testutil.NewGate()
	defer release.Release()
	u := testutil.NewServer(t, streamHandler(release, chunks))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()

	bodies := make(chan string, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := get(g.Client, u.URL)
			if err != nil {
				errs <- err
				return
			}
			bodies <- b
		}()
	}
	testutil.WaitFor(t, "50 responses are streaming", func() bool {
		return release.Waiting.Load() == n && g.Stats.Snapshot().InFlight == n
	})

	stopped := make(chan error, 1)
	go func() { stopped <- app.Stop(context.Background()) }()
	testutil.WaitFor(t, "the gate closes", func() bool { return gateClosed(g.Client, u.URL+"/probe") })
	select {
	case err := <-stopped:
		t.Fatalf("stop returned (%v) while 50 bodies were being read", err)
	default:
	}
	release.Release()
	wg.Wait()
	close(errs)
	close(bodies)
	for err := range errs {
		t.Errorf("streaming request failed: %v", err)
	}
	complete := 0
	for b := range bodies {
		if b == wantStream(chunks) {
			complete++
		}
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
	s := g.Stats.Snapshot()
	if complete != n || s.Cut != 0 || s.InFlight != 0 {
		t.Errorf("%d of %d bodies complete, %d cut, %d in flight; want all complete, none cut", complete, n, s.Cut, s.InFlight)
	}
	u.RequireNoConns(t)
}

// Past the drain bound, stop cuts the requests still running: they fail instead of hanging,
// and stop's error wraps the deadline and counts them. Both bounds are tested: DrainTimeout
// through the app's stop, and the stop context through Shutdown (fx itself returns the
// context's error, without waiting for the hook, once its stop context expires).
func TestStopPastDeadlineCutsHungRequests(t *testing.T) {
	tests := []struct {
		name         string
		drainTimeout time.Duration
		stopTimeout  time.Duration
		stop         func(context.Context, *fxtest.App, *http.Client) error
	}{
		{"DrainTimeout", 200 * time.Millisecond, time.Minute,
			func(ctx context.Context, app *fxtest.App, _ *http.Client) error { return app.Stop(ctx) }},
		{"stop context", 0, 200 * time.Millisecond,
			func(ctx context.Context, _ *fxtest.App, c *http.Client) error { return httpfx.Shutdown(ctx, c) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hang := testutil.NewGate()
			defer hang.Release()
			u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/body" {
					w.(http.Flusher).Flush() // headers now, the body never
				}
				hang.Wait()
			}))
			var g graph
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withConfig(func(c *httpfx.Config) {
				c.Timeout, c.ResponseHeaderTimeout, c.DrainTimeout = 0, 0, tt.drainTimeout
			}))
			app.RequireStart()

			// Two requests hang waiting for headers; one has headers and hangs reading the body;
			// one has headers and the caller never reads or closes its body.
			results := make(chan error, 3)
			for _, path := range []string{"/headers", "/headers", "/body"} {
				go func() {
					_, err := get(g.Client, u.URL+path)
					results <- err
				}()
			}
			abandoned, err := g.Client.Get(u.URL + "/body")
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, "4 requests hang", func() bool { return hang.Waiting.Load() == 4 })

			ctx, cancel := context.WithTimeout(context.Background(), tt.stopTimeout)
			defer cancel()
			err = tt.stop(ctx, app, g.Client)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "cut 4 in-flight") {
				t.Fatalf("stop: %v; want an error wrapping context.DeadlineExceeded that says 4 were cut", err)
			}
			for range 3 {
				select {
				case err := <-results:
					if err == nil {
						t.Error("a cut request succeeded, want an error")
					}
				case <-time.After(10 * time.Second):
					t.Fatal("a cut request still hangs after stop")
				}
			}
			abandoned.Body.Close()
			if s := g.Stats.Snapshot(); s.Cut != 4 || s.ConnsOpen != 0 {
				t.Errorf("stats = %+v, want 4 cut and no connection open", s)
			}
			// Stopping again is harmless: the hook returns the first stop's result.
			if err := app.Stop(context.Background()); err != nil && !strings.Contains(err.Error(), "cut 4 in-flight") {
				t.Errorf("second stop: %v", err)
			}
			hang.Release() // The server closes a connection only when its handler returns.
			u.RequireNoConns(t)
		})
	}
}

// Config.Timeout covers the whole request, body included, without http.Client.Timeout.
func TestTimeoutCoversBody(t *testing.T) {
	t.Parallel()
	hang := testutil.NewGate()
	defer hang.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		hang.Wait()
	}))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withConfig(func(c *httpfx.Config) {
		c.Timeout = 300 * time.Millisecond
	}))
	defer app.RequireStart().RequireStop()

	_, err := get(g.Client, u.URL)
	var ne net.Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("body read past Timeout: err = %v; want a timeout error wrapping context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "Config.Timeout") {
		t.Errorf("error %q does not say which timeout expired", err)
	}
	if s := g.Stats.Snapshot(); s.InFlight != 0 || s.Failed != 1 {
		t.Errorf("stats = %+v, want nothing in flight and 1 failed", s)
	}
}

// A response without a body is finished when it arrives, even if the caller never closes it.
func TestEmptyBodyIsNotInFlight(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()
	resp, err := g.Client.Head(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	if s := g.Stats.Snapshot(); s.InFlight != 0 {
		t.Errorf("in flight = %d after a bodiless response, want 0", s.InFlight)
	}
	app.RequireStop()
	resp.Body.Close()
	u.RequireNoConns(t)
}

// A 101 Switching Protocols body stays writable through the shared client and counts as in
// flight until it is closed.
func TestSwitchingProtocolsStaysWritable(t *testing.T) {
	u := testutil.NewServer(t, echoUpgradeHandler(nil))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()

	req, _ := http.NewRequest(http.MethodGet, u.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	stream, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body is %T, want an io.ReadWriteCloser", resp.Body)
	}
	if _, err := io.WriteString(stream, "ping\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stream).ReadString('\n')
	if err != nil || line != "echo: ping\n" {
		t.Fatalf("read %q, %v; want the echo", line, err)
	}
	if s := g.Stats.Snapshot(); s.InFlight != 1 {
		t.Errorf("in flight = %d while the stream is open, want 1", s.InFlight)
	}
	stream.Close()
	if s := g.Stats.Snapshot(); s.InFlight != 0 {
		t.Errorf("in flight = %d after close, want 0", s.InFlight)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}
