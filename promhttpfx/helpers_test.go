package promhttpfx_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream is a loopback test server that counts its connections as the server sees them.
type upstream struct {
	*httptest.Server
	opened, closed atomic.Int64
}

func newUpstream(t testing.TB, h http.Handler) *upstream {
	t.Helper()
	u := &upstream{Server: httptest.NewUnstartedServer(h)}
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			u.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			u.closed.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) open() int64 { return u.opened.Load() - u.closed.Load() }

// requireNoConns waits until the server has seen every client connection close, then checks
// that no client goroutine is left. Call it before the server is closed, which would hide a
// client that leaks connections.
func (u *upstream) requireNoConns(t testing.TB) {
	t.Helper()
	waitFor(t, "server sees all client connections closed", func() bool { return u.open() == 0 })
	if err := goleak.Find(goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1")); err != nil {
		t.Fatalf("goroutines left after stop: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after a generous bound.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gate is a handler barrier: handlers call wait, the test calls release once.
type gate struct {
	once    sync.Once
	ch      chan struct{}
	waiting atomic.Int64
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) wait() {
	g.waiting.Add(1)
	<-g.ch
}

func (g *gate) release() { g.once.Do(func() { close(g.ch) }) }

// closedPort returns the URL of a loopback port nobody listens on.
func closedPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	return "http://" + ln.Addr().String()
}
