package compat_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// go-retryablehttp calls CloseIdleConnections on the client it is handed whenever a request
// gives up (retries exhausted, context ended during backoff). Handed the shared client, that
// must not throw away the connections every other component of the process uses.
func TestRetryableHTTPDoesNotFlushTheSharedPool(t *testing.T) {
	// Another component keeps conns connections busy and pooled: its requests to /hold wait
	// for each other in rounds of conns, so each round needs exactly conns connections.
	const conns = 4
	var (
		accepted atomic.Int64
		hold     = newBarrier(conns)
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case "/hold":
			hold.wait()
		}
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			accepted.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	core, logs := observer.New(zap.InfoLevel)
	var (
		client *http.Client
		stats  *httpfx.Stats
	)
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)), fx.Populate(&client, &stats))
	app.RequireStart()

	warm := func() {
		var wg sync.WaitGroup
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				get(t, client, srv.URL+"/hold")
			}()
		}
		wg.Wait()
	}
	warm()
	opened := stats.Snapshot().ConnsOpened
	if opened != conns {
		t.Fatalf("connections opened by the first round: %d, want %d", opened, conns)
	}

	rc := retryablehttp.NewClient()
	rc.HTTPClient = client
	rc.RetryMax = 1
	rc.RetryWaitMin, rc.RetryWaitMax = time.Millisecond, time.Millisecond
	rc.Logger = nil
	if _, err := rc.Get(srv.URL + "/fail"); err == nil {
		t.Fatal("retryablehttp: want an error after its retries are exhausted")
	}
	// Cancelled during its backoff: it calls CloseIdleConnections again.
	rc.RetryWaitMin, rc.RetryWaitMax = time.Minute, time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/fail", nil)
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, err := rc.Do(req); err == nil {
		t.Fatal("retryablehttp: want an error when cancelled during backoff")
	}

	s := stats.Snapshot()
	if s.CloseIdleIgnored < 2 {
		t.Errorf("CloseIdleIgnored = %d, want at least 2 (one per give-up)", s.CloseIdleIgnored)
	}
	if s.ConnsOpen < 1 {
		t.Errorf("connections open after retryablehttp gave up: %d, want the pool kept", s.ConnsOpen)
	}
	warm() // the other component again: its connections are still there
	if now := stats.Snapshot().ConnsOpened; now != opened {
		t.Errorf("connections opened: %d before retryablehttp gave up, %d after; want no new ones", opened, now)
	}
	if n := logs.FilterMessageSnippet("ignored CloseIdleConnections").Len(); n != 1 {
		t.Errorf("logged the ignored call %d times, want once", n)
	}

	// The app's owner can still flush on purpose, and stop closes everything.
	if err := httpfx.CloseIdleConnections(client); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the flush closes the pool", func() bool { return stats.Snapshot().ConnsOpen == 0 })
	app.RequireStop()
	if accepted.Load() != stats.Snapshot().ConnsOpened {
		t.Errorf("server accepted %d connections, httpfx counted %d", accepted.Load(), stats.Snapshot().ConnsOpened)
	}
}

func get(t *testing.T, c *http.Client, url string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Error(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// barrier releases its waiters in groups of n; a waiter left alone gives up after 5 s, so a
// broken test fails instead of hanging.
type barrier struct {
	mu sync.Mutex
	n  int
	in int
	ch chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, ch: make(chan struct{})} }

func (b *barrier) wait() {
	b.mu.Lock()
	b.in++
	if b.in == b.n {
		close(b.ch)
		b.in, b.ch = 0, make(chan struct{})
		b.mu.Unlock()
		return
	}
	ch := b.ch
	b.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
	}
}
