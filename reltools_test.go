package httpfx_test

// Helpers shared by faults_test.go and load_test.go: a raw loopback server that misbehaves on
// purpose, an app starter, bounded waits, and readers of the process's goroutines, file
// descriptors and TIME_WAIT sockets.

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/goleak"
)

// rawServer is a loopback TCP server whose every byte is written by the test, so that it can
// misbehave in ways net/http's server cannot: malformed or truncated responses, resets, a
// restart on the same port. It counts the connections it has open.
type rawServer struct {
	ln       net.Listener
	addr     string // host:port, also after the listener is closed
	handle   func(net.Conn)
	accepted atomic.Int64
	live     atomic.Int64 // connections whose handler has not returned

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// newRawServer listens on addr ("127.0.0.1:0" for a free port, or the address of a server
// that was stopped, to restart it) and runs handle on each connection, closing the connection
// when handle returns. The server is closed when the test ends.
func newRawServer(t testing.TB, addr string, handle func(net.Conn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	s := &rawServer{ln: ln, addr: ln.Addr().String(), handle: handle, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

func (s *rawServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.accepted.Add(1)
		s.live.Add(1)
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *rawServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer s.live.Add(-1)
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	s.handle(c)
}

// URL is the server's base URL.
func (s *rawServer) URL() string { return "http://" + s.addr }

// closeListener stops accepting; connections already open stay open.
func (s *rawServer) closeListener() { s.ln.Close() }

// Close closes the listener and every open connection, and waits for the handlers to return,
// as a process that exits would.
func (s *rawServer) Close() {
	s.closeOnce.Do(func() {
		s.ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

// requireClientGone is upstream.requireNoConns for a rawServer: it waits (bounded) until the
// client closed every connection, then checks that no client goroutine is left. Call it before
// the server is closed. The handlers must end when the client closes its side.
func (s *rawServer) requireClientGone(t testing.TB) {
	t.Helper()
	testutil.WaitFor(t, "the raw server sees all client connections closed", func() bool { return s.live.Load() == 0 })
	requireNoClientGoroutines(t)
}

// requireNoClientGoroutines fails if a goroutine other than a test server's accept loop is
// left: after a client's stop, no net/http client goroutine may remain.
func requireNoClientGoroutines(t testing.TB) {
	t.Helper()
	if err := goleak.Find(
		goleak.IgnoreAnyFunction("net/http/httptest.(*Server).goServe.func1"),
		goleak.IgnoreAnyFunction("github.com/httpfx/httpfx_test.(*rawServer).accept"),
	); err != nil {
		t.Fatalf("goroutines left after stop: %v", err)
	}
}

// rawHandler answers one request read from br on c, by writing to c. It returns false to have
// the connection closed (or when it closed or reset c itself).
type rawHandler func(c net.Conn, br *bufio.Reader, req *http.Request) (keepAlive bool)

// rawHTTP serves requests on a connection, one after the other, with h. Request bodies are
// read in full before h runs. The connection ends when the client closes it or h says so.
func rawHTTP(h rawHandler) func(net.Conn) {
	return func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, err = io.Copy(io.Discard, req.Body)
			req.Body.Close()
			if err != nil || !h(c, br, req) {
				return
			}
		}
	}
}

// rawWriteOK writes a complete keep-alive 200 response with body s.
func rawWriteOK(c net.Conn, s string) bool {
	_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(s))+"\r\n\r\n"+s)
	return err == nil
}

// awaitClientClose blocks until the client closes c (or the server is closed), discarding
// anything the client sends: a server that never answers.
func awaitClientClose(c net.Conn) { io.Copy(io.Discard, c) }

// resetConn closes c with SO_LINGER 0, so that the client gets a TCP RST instead of a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// relApp starts an app with httpfx.Module, DefaultConfig changed by edit (nil keeps it), and
// opts, and returns it with what it provides. The caller stops it.
func relApp(t testing.TB, edit func(*httpfx.Config), opts ...fx.Option) (*fxtest.App, *graph) {
	t.Helper()
	if edit == nil {
		edit = func(*httpfx.Config) {}
	}
	g := new(graph)
	opts = append([]fx.Option{fx.NopLogger, httpfx.Module, populate(g), withConfig(edit)}, opts...)
	app := fxtest.New(t, opts...)
	app.RequireStart()
	return app, g
}

// relWithin runs f and fails the test if it has not returned after d: a bound against hanging,
// not a timing assertion.
func relWithin(t testing.TB, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s still hangs after %v", what, d)
	}
}

// settleBound bounds the wait for goroutines and descriptors to come back to their baseline.
const settleBound = 3 * time.Second

// settleGoroutines waits (bounded) until at most want goroutines run, and returns how many run
// then. Goroutines of connections just closed take a moment to unwind.
func settleGoroutines(want int) int {
	deadline := time.Now().Add(settleBound)
	n := runtime.NumGoroutine()
	for n > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// openFDs is the number of file descriptors the process has open, or -1 where /proc is
// missing.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) // includes the descriptor ReadDir itself held, in every count alike
}

// settleFDs waits (bounded) until at most want descriptors are open, and returns how many are.
// A closed connection's descriptor is released once the last goroutine using it lets go.
func settleFDs(want int) int {
	deadline := time.Now().Add(settleBound)
	n := openFDs()
	for n > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		n = openFDs()
	}
	return n
}

// timeWait counts the loopback TCP sockets in TIME_WAIT (state 06 in /proc/net/tcp and tcp6)
// whose local or remote port is port, or returns -1 where /proc is missing. Whoever closes a
// connection first keeps it in TIME_WAIT for a minute; a pool that reuses its connections adds
// none while it runs.
func timeWait(port int) int {
	n, found := 0, false
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		found = true
		for i, line := range bytes.Split(b, []byte("\n")) {
			fields := strings.Fields(string(line))
			if i == 0 || len(fields) < 4 || fields[3] != "06" {
				continue
			}
			if hexPort(fields[1]) == port || hexPort(fields[2]) == port {
				n++
			}
		}
	}
	if !found {
		return -1
	}
	return n
}

// hexPort returns the port of a /proc/net/tcp address ("0100007F:1F90").
func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseUint(addr[i+1:], 16, 16)
	if err != nil {
		return -1
	}
	return int(p)
}

// portOf returns the port of a listener's address.
func portOf(addr net.Addr) int {
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.Port
	}
	return -1
}
