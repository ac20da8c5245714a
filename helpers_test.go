package httpfx_test

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

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// upstream is a loopback test server that counts its connections as the server sees them.
type upstream struct {
	*httptest.Server
	opened   atomic.Int64 // connections accepted
	closed   atomic.Int64 // connections closed (by either side)
	hijacked atomic.Int64
}

func newUpstream(t testing.TB, h http.Handler) *upstream {
	t.Helper()
	u := &upstream{Server: httptest.NewUnstartedServer(h)}
	u.Config.ConnState = u.track
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func newTLSUpstream(t testing.TB, h http.Handler, http2 bool) *upstream {
	t.Helper()
	u := &upstream{Server: httptest.NewUnstartedServer(h)}
	u.Config.ConnState = u.track
	u.EnableHTTP2 = http2
	u.StartTLS()
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) track(_ net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		u.opened.Add(1)
	case http.StateClosed:
		u.closed.Add(1)
	case http.StateHijacked:
		u.hijacked.Add(1)
	}
}

// open is the number of connections the server still has open.
func (u *upstream) open() int64 { return u.opened.Load() - u.closed.Load() - u.hijacked.Load() }

// requireNoConns waits (bounded) until the server has seen every client connection close,
// then checks that no client goroutine is left. Call it before the server is closed: closing
// the server would close the connections and hide a client that leaks them.
func (u *upstream) requireNoConns(t testing.TB) {
	t.Helper()
	waitFor(t, "server sees all client connections closed", func() bool { return u.open() == 0 })
	if err := goleak.Find(goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1")); err != nil {
		t.Fatalf("goroutines left after stop: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after a generous bound. It is a wait,
// not a timing assertion: on a slow machine it only takes longer.
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

// echoUpgradeHandler answers every request but /probe with 101 Switching Protocols, then
// echoes each line it reads back, prefixed "echo: ", until the client closes. live, if set,
// counts the streams whose handler has not returned.
func echoUpgradeHandler(live *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if live != nil {
			live.Add(1)
			defer live.Add(-1)
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		rw.Flush()
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			rw.WriteString("echo: " + line)
			if rw.Flush() != nil {
				return
			}
		}
	})
}
