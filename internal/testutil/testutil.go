// Package testutil holds the test helpers shared by httpfx's modules: loopback servers that
// count their connections, bounded waits, a barrier for handlers, a closed port and a resolver
// whose answers a test changes. Tests of every module of the repository import it; nothing
// else does.
package testutil

import (
	"context"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// WaitingTestsInParallel lets 8 parallel tests run at once, unless -test.parallel is given or
// the race detector is on: the parallel tests of httpfx mostly wait, for timers and for
// loopback servers, so the default of GOMAXPROCS (2 on a small CI machine) would run them
// nearly one at a time; under the race detector they compute several times as much, and their
// bounds of a few hundred milliseconds would not hold 8 at a time. Call it from TestMain,
// before m.Run.
func WaitingTestsInParallel() {
	flag.Parse()
	set := RaceEnabled
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", "8")
	}
}

// Server is a loopback test server that counts its connections as the server sees them.
type Server struct {
	*httptest.Server
	opened   atomic.Int64 // connections accepted
	closed   atomic.Int64 // connections closed (by either side)
	hijacked atomic.Int64
}

// NewServer starts a plain-HTTP Server for h; the test's cleanup closes it.
func NewServer(t testing.TB, h http.Handler) *Server {
	t.Helper()
	s := &Server{Server: httptest.NewUnstartedServer(h)}
	s.Config.ConnState = s.track
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// NewUnstartedServer returns a Server for h that counts its connections, for the test to
// configure and start; the test's cleanup closes it.
func NewUnstartedServer(t testing.TB, h http.Handler) *Server {
	t.Helper()
	s := &Server{Server: httptest.NewUnstartedServer(h)}
	s.Config.ConnState = s.track
	t.Cleanup(s.Close)
	return s
}

// NewServerOn starts a plain-HTTP Server for h on ln; the test's cleanup closes it.
func NewServerOn(t testing.TB, ln net.Listener, h http.Handler) *Server {
	t.Helper()
	s := &Server{Server: httptest.NewUnstartedServer(h)}
	s.Listener.Close()
	s.Listener = ln
	s.Config.ConnState = s.track
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// NewTLSServer starts an HTTPS Server for h, offering HTTP/2 if http2; the test's cleanup
// closes it.
func NewTLSServer(t testing.TB, h http.Handler, http2 bool) *Server {
	t.Helper()
	s := &Server{Server: httptest.NewUnstartedServer(h)}
	s.Config.ConnState = s.track
	s.EnableHTTP2 = http2
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *Server) track(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.opened.Add(1)
	case http.StateClosed:
		s.closed.Add(1)
	case http.StateHijacked:
		s.hijacked.Add(1)
	}
}

// Opened is the number of connections the server accepted.
func (s *Server) Opened() int64 { return s.opened.Load() }

// Closed is the number of connections the server saw close.
func (s *Server) Closed() int64 { return s.closed.Load() }

// Open is the number of connections the server still has open.
func (s *Server) Open() int64 { return s.opened.Load() - s.closed.Load() - s.hijacked.Load() }

// RequireNoConns waits (bounded) until the server has seen every client connection close,
// then checks that no client goroutine is left. Call it before the server is closed: closing
// the server would close the connections and hide a client that leaks them. It looks at every
// goroutine of the process: a test that calls it must not run in parallel with others.
func (s *Server) RequireNoConns(t testing.TB) {
	t.Helper()
	WaitFor(t, "server sees all client connections closed", func() bool { return s.Open() == 0 })
	if err := goleak.Find(goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1")); err != nil {
		t.Fatalf("goroutines left after stop: %v", err)
	}
}

// WaitFor polls cond until it holds, failing the test after a generous bound. It is a wait,
// not a timing assertion: on a slow machine it only takes longer.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Gate is a barrier for handlers: they call Wait, the test calls Release once.
type Gate struct {
	once    sync.Once
	ch      chan struct{}
	Waiting atomic.Int64 // handlers that called Wait
}

// NewGate returns a closed Gate.
func NewGate() *Gate { return &Gate{ch: make(chan struct{})} }

// Wait blocks until Release.
func (g *Gate) Wait() {
	g.Waiting.Add(1)
	<-g.ch
}

// Release lets every Wait return, now and later.
func (g *Gate) Release() { g.once.Do(func() { close(g.ch) }) }

// ClosedURL returns the URL of a loopback port nothing listens on: "http://127.0.0.1:port".
func ClosedURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// Resolver answers from a table the test changes, as httpfx.Resolver; it counts the lookups.
// A lookup of a name it does not know fails as "no such host". It is safe for concurrent use.
type Resolver struct {
	mu    sync.Mutex
	addrs map[string][]netip.Addr
	err   error
	hang  bool // a lookup waits for its context to end, as a resolver that times out
	Calls atomic.Int64
}

// LookupNetIP implements httpfx.Resolver.
func (r *Resolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	r.Calls.Add(1)
	r.mu.Lock()
	hang, err, a, ok := r.hang, r.err, slices.Clone(r.addrs[host]), r.addrs[host] != nil
	r.mu.Unlock()
	switch {
	case hang:
		<-ctx.Done()
		return nil, ctx.Err()
	case err != nil:
		return nil, err
	case !ok:
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return a, nil
}

// Set makes host resolve to ips.
func (r *Resolver) Set(host string, ips ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.addrs == nil {
		r.addrs = map[string][]netip.Addr{}
	}
	r.addrs[host] = []netip.Addr{}
	for _, ip := range ips {
		r.addrs[host] = append(r.addrs[host], netip.MustParseAddr(ip))
	}
}

// Fail makes every lookup fail with err; nil ends it.
func (r *Resolver) Fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

// Hang makes every lookup wait until its context ends (true), or answer again (false).
func (r *Resolver) Hang(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hang = on
}

// ResetFirst returns a handler that resets the connection of its first request, before any
// response, and answers "ok" to the others: the first attempt fails, a retry passes.
func ResetFirst(t testing.TB) http.Handler {
	var calls atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) > 1 {
			w.Write([]byte("ok"))
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean close
		}
		conn.Close()
	})
}

// IgnoringResolver answers its first lookup with 127.0.0.1, then ignores its context until
// Release is closed, as a resolver behind a library without context support may. It counts
// the lookups. It is safe for concurrent use.
type IgnoringResolver struct {
	Calls   atomic.Int64
	Release chan struct{}
}

// LookupNetIP implements httpfx.Resolver.
func (r *IgnoringResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	if r.Calls.Add(1) > 1 {
		<-r.Release
	}
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}
