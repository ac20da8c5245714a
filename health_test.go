package httpfx_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// raceResult is what a run of postRace saw.
type raceResult struct {
	sent     int64
	failures []error
}

// postRace sends POSTs with replayable bodies (strings.Reader) and a unique X-Request-Id from
// callers goroutines, each pausing pause±1% between requests, until d has passed: the pause
// that meets a server closing idle connections after about as long. It is bounded in time
// and in count.
func postRace(t *testing.T, c *http.Client, url, prefix string, callers int, pause, d time.Duration, each ...int) raceResult {
	t.Helper()
	var (
		mu  sync.Mutex
		res raceResult
		wg  sync.WaitGroup
	)
	end := time.Now().Add(d)
	maxPer := int(d/pause) + 2
	if len(each) > 0 {
		maxPer = each[0]
	}
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxPer && time.Now().Before(end); i++ {
				id := fmt.Sprintf("%sc%d-%d", prefix, g, i)
				_, err := postOnce(c, url, id)
				mu.Lock()
				res.sent++
				if err != nil {
					res.failures = append(res.failures, fmt.Errorf("%s: %w", id, err))
				}
				mu.Unlock()
				jitter := time.Duration(rand.Int64N(int64(pause)/50+1)) - pause/100
				time.Sleep(pause + jitter)
			}
		}()
	}
	wg.Wait()
	return res
}

// postOnce sends one POST with the request id id and reads its response.
func postOnce(c *http.Client, url, id string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"charge":100}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Request-Id", id)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// The keep-alive race against a real nginx: callers pause about as long as nginx keeps an
// idle connection, so that it closes connections just as they are reused. net/http alone
// loses POSTs to it (they fail with EOF or a reset, and nginx never saw them); through httpfx
// every POST succeeds, and nginx logged each request exactly once.
func TestKeepAliveRaceLosesNoPost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		keepalive string // nginx's keepalive_timeout
		pause     time.Duration
		d         time.Duration
		wantBound time.Duration // the idle bound httpfx should learn, at most
	}{
		{"nginx closes idle connections after 100ms", "100ms", 100 * time.Millisecond, 2 * time.Second, 150 * time.Millisecond},
		{"nginx announces Keep-Alive: timeout=1", "1s 1", time.Second, 3 * time.Second, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ngx := startNginx(t, tt.keepalive)
			var (
				client *http.Client
				stats  *httpfx.Stats
			)
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Populate(&client, &stats))
			app.RequireStart()
			// What a deployed pool meets in its first minutes: connections left idle until
			// the server closes them. Until two such closes agree nothing can know the bound,
			// and a request sent within the same instant as such a close may meet it (see
			// docs/design.md).
			addr := strings.TrimPrefix(ngx.URL, "http://")
			warm := learnIdleBound(t, client, stats, ngx.URL, addr, func(id string) error {
				_, err := postOnce(client, ngx.URL, id)
				return err
			})
			res := postRace(t, client, ngx.URL, "", 16, tt.pause, tt.d)
			res.sent += int64(warm)
			s := stats.Snapshot()
			app.RequireStop()

			for _, err := range res.failures {
				t.Errorf("POST failed: %v", err)
			}
			ids := ngx.ids(t)
			if int64(len(ids)) != res.sent {
				t.Errorf("nginx logged %d request ids, %d POSTs were sent", len(ids), res.sent)
			}
			for id, n := range ids {
				if n != 1 {
					t.Errorf("nginx processed %s %d times, want once", id, n)
				}
			}
			bound, ok := s.IdleBounds[addr]
			if !ok || bound > tt.wantBound {
				t.Errorf("learned idle bound %v (%v), want at most %v", bound, ok, tt.wantBound)
			}
			t.Logf("%d POSTs, %d failed; replayed %d, retired %v, idle bound %v, connections opened %d",
				res.sent, len(res.failures), s.Replayed, s.ConnsRetired, bound, s.ConnsOpened)
		})
	}
}

// TestKeepAliveRaceSideBySide measures, for the README, how many POSTs a transport with the
// same settings but without httpfx loses in the race above, beside httpfx, in alternating
// rounds against one nginx. It asserts nothing and runs only when HTTPFX_BASELINE is set:
//
//	HTTPFX_BASELINE=1 go test -run TestKeepAliveRaceSideBySide -v .
func TestKeepAliveRaceSideBySide(t *testing.T) {
	t.Parallel()
	if os.Getenv("HTTPFX_BASELINE") == "" {
		t.Skip("set HTTPFX_BASELINE=1 to measure net/http alone beside httpfx in the keep-alive race")
	}
	ngx := startNginx(t, "100ms")
	cfg := httpfx.DefaultConfig()
	type total struct{ sent, failed, processed int }
	var raw, fx total
	count := func(tot *total, res raceResult) {
		ids := ngx.ids(t)
		tot.sent += int(res.sent)
		tot.failed += len(res.failures)
		for _, err := range res.failures {
			id, _, _ := strings.Cut(err.Error(), ":")
			tot.processed += ids[id]
		}
	}
	for round := range 3 {
		tr := &http.Transport{
			MaxIdleConns: cfg.MaxIdleConns, MaxIdleConnsPerHost: cfg.MaxIdleConnsPerHost,
			MaxConnsPerHost: cfg.MaxConnsPerHost, IdleConnTimeout: cfg.IdleConnTimeout,
		}
		count(&raw, postRace(t, &http.Client{Transport: tr}, ngx.URL, fmt.Sprintf("raw%d-", round), 16, 100*time.Millisecond, 5*time.Second))
		tr.CloseIdleConnections()

		res, err := httpfx.New(httpfx.Params{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		count(&fx, postRace(t, res.Client, ngx.URL, fmt.Sprintf("fx%d-", round), 16, 100*time.Millisecond, 5*time.Second))
		if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
			t.Fatal(err)
		}
		t.Logf("after round %d: net/http alone %+v, httpfx %+v", round+1, raw, fx)
	}
	for _, r := range []struct {
		name string
		tot  total
	}{{"net/http alone", raw}, {"httpfx", fx}} {
		t.Logf("%s: %d of %d POSTs failed (%.2f%%); nginx processed %d of the failed ones",
			r.name, r.tot.failed, r.tot.sent, 100*float64(r.tot.failed)/float64(r.tot.sent), r.tot.processed)
	}
}

// freezer is a loopback TCP proxy that can stop forwarding without closing anything: what a
// peer that vanished behind a NAT, or a half-open connection, looks like to the client.
type freezer struct {
	*rawServer
	frozen atomic.Bool
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	f := new(freezer)
	f.rawServer = newRawServer(t, "127.0.0.1:0", func(c net.Conn) {
		b, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		done := make(chan struct{})
		go func() { f.pipe(c, b); close(done) }()
		f.pipe(b, c)
		b.Close()
		<-done
	})
	return f
}

// pipe copies from src to dst until src fails, then closes dst; while frozen, it drops what it
// reads.
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// A dead HTTP/2 connection fails its request within the ping bound instead of hanging until
// the request's timeout, and counts as dead.
func TestDeadHTTP2PeerFoundByPing(t *testing.T) {
	t.Parallel()
	u := testutil.NewTLSServer(t, okHandler(), true)
	f := newFreezer(t, u.Listener.Addr().String())
	roots := x509.NewCertPool()
	roots.AddCert(u.Certificate())
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		withConfig(func(c *httpfx.Config) {
			c.Timeout, c.ResponseHeaderTimeout = 30*time.Second, 30*time.Second
			c.HTTP2SendPingTimeout, c.HTTP2PingTimeout = 200*time.Millisecond, 200*time.Millisecond
		}),
		fx.Decorate(func(tr *http.Transport) *http.Transport { tr.TLSClientConfig.RootCAs = roots; return tr }))
	app.RequireStart()
	url := "https://" + f.addr + "/"
	resp, err := g.Client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("negotiated %s, want HTTP/2", resp.Proto)
	}
	f.frozen.Store(true)
	began := time.Now()
	_, err = get(g.Client, url)
	took := time.Since(began)
	if err == nil || took > 10*time.Second {
		t.Fatalf("request over a dead connection: %v after %v; want an error within the ping bound, long before the 30s timeout", err, took)
	}
	testutil.WaitFor(t, "the dead connection is counted", func() bool { return g.Stats.Snapshot().ConnsRetired[httpfx.RetiredDead] == 1 })
	t.Logf("failed after %v: %v", took.Round(time.Millisecond), err)
	app.RequireStop()
}

// Retiring never cuts a request in flight: a response that streams slowly for longer than the
// connection's lifetime and than its server's idle bound completes; the connection is retired
// when the next request takes it, and that request goes on a new one.
func TestRetiringNeverCutsAStream(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Keep-Alive", "timeout=1")
		if r.URL.Path != "/stream" {
			io.WriteString(w, "ok")
			return
		}
		for i := range 5 {
			fmt.Fprintf(w, "chunk %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond) // longer than the lifetime, and idle on the wire
		}
	}))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g),
		withConfig(func(c *httpfx.Config) { c.MaxConnLifetime = 200 * time.Millisecond }))
	app.RequireStart()
	if got := mustGet(t, g.Client, u.URL+"/stream"); strings.Count(got, "chunk") != 5 {
		t.Fatalf("stream = %q, want 5 chunks", got)
	}
	if s := g.Stats.Snapshot(); s.ConnsOpened != 1 || s.ConnsRetired[httpfx.RetiredLifetime] != 0 {
		t.Fatalf("during the stream: %d opened, retired %v; want 1 and none", s.ConnsOpened, s.ConnsRetired)
	}
	if got := mustGet(t, g.Client, u.URL+"/next"); got != "ok" {
		t.Fatalf("next = %q", got)
	}
	s := g.Stats.Snapshot()
	if s.ConnsOpened != 2 || s.ConnsRetired[httpfx.RetiredLifetime] != 1 || s.Replayed != 1 {
		t.Errorf("after: %d opened, retired %v, replayed %d; want 2, one by lifetime, 1", s.ConnsOpened, s.ConnsRetired, s.Replayed)
	}
	if b := s.IdleBounds[strings.TrimPrefix(u.URL, "http://")]; b != time.Second {
		t.Errorf("idle bound from Keep-Alive: timeout=1 = %v, want 1s", b)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// Only the first write of a request that took a pooled connection is checked: an upgraded
// stream on a reused connection keeps writing while the server's data waits unread.
func TestHealthLeavesStreamsOnReusedConnectionsAlone(t *testing.T) {
	u := testutil.NewServer(t, echoUpgradeHandler(nil))
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g))
	app.RequireStart()
	mustGet(t, g.Client, u.URL+"/probe") // the connection goes to the pool
	time.Sleep(20 * time.Millisecond)    // idle long enough to be checked when taken
	req, _ := http.NewRequest(http.MethodGet, u.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := g.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	stream := resp.Body.(io.ReadWriteCloser)
	io.WriteString(stream, "one\n")
	time.Sleep(60 * time.Millisecond) // its echo waits unread
	if _, err := io.WriteString(stream, "two\n"); err != nil {
		t.Fatalf("second write on the stream: %v", err)
	}
	r := bufio.NewReader(stream)
	for _, want := range []string{"echo: one\n", "echo: two\n"} {
		if line, err := r.ReadString('\n'); err != nil || line != want {
			t.Fatalf("stream: %q, %v; want %q", line, err, want)
		}
	}
	if s := g.Stats.Snapshot(); s.ConnsOpened != 1 || s.ConnsRetired[httpfx.RetiredServerClosed] != 0 {
		t.Errorf("opened %d, retired %v: want the one connection, never retired", s.ConnsOpened, s.ConnsRetired)
	}
	stream.Close()
	app.RequireStop()
	u.RequireNoConns(t)
}

// A server's close of an idle connection teaches its idle bound at once, without any request
// meeting the close: net/http's read loop waits on every idle connection.
func TestIdleBoundLearnedFromIdleClose(t *testing.T) {
	t.Parallel()
	for _, tlsOn := range []bool{false, true} {
		name := "http"
		if tlsOn {
			name = "https" // the close starts with a close_notify, which tls.Conn reads as EOF
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewUnstartedServer(okHandler())
			srv.Config.IdleTimeout = 150 * time.Millisecond
			var opts []fx.Option
			if tlsOn {
				srv.EnableHTTP2 = false
				srv.StartTLS()
				opts = append(opts, trustServer(srv))
			} else {
				srv.Start()
			}
			defer srv.Close()
			var (
				client *http.Client
				stats  *httpfx.Stats
			)
			app := fxtest.New(t, append(opts, fx.NopLogger, httpfx.Module, fx.Populate(&client, &stats))...)
			app.RequireStart()
			defer app.RequireStop()
			addr := srv.Listener.Addr().String()
			learnIdleBound(t, client, stats, srv.URL, addr, func(string) error {
				_, err := get(client, srv.URL)
				return err
			})
			s := stats.Snapshot()
			if b := s.IdleBounds[addr]; b < 100*time.Millisecond || b > time.Second {
				t.Errorf("learned idle bound %v, want about the server's 150ms", b)
			}
			if s.Replayed != 0 || s.ConnsRetired[httpfx.RetiredServerClosed] != 0 {
				t.Errorf("no request met the close, yet replayed %d, retired %v", s.Replayed, s.ConnsRetired)
			}
		})
	}
}

// learnIdleBound sends requests with send, one at a time, each after the server closed the
// connection of the one before while it was idle, until the client has learned addr's idle
// bound from three such closes, and returns how many it sent (at most 6).
func learnIdleBound(t *testing.T, client *http.Client, stats *httpfx.Stats, url, addr string, send func(id string) error) int {
	t.Helper()
	for i := range 6 {
		if err := send(fmt.Sprintf("warmup-%d", i)); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "the server closes the idle connection", func() bool { return stats.Snapshot().ConnsOpen == 0 })
		time.Sleep(2 * momentWindow) // the next close is another moment
		if _, ok := stats.Snapshot().IdleBounds[addr]; ok {
			return i + 1
		}
	}
	t.Fatalf("no idle bound learned for %s after 6 closes: %v", addr, stats.Snapshot().IdleBounds)
	return 0
}

// momentWindow is health.go's: the closes of one moment, which teach nothing together.
const momentWindow = 100 * time.Millisecond

// trustServer makes the owned transport trust srv's certificate.
func trustServer(srv *httptest.Server) fx.Option {
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return fx.Decorate(func(tr *http.Transport) *http.Transport {
		tr.TLSClientConfig.RootCAs = roots
		return tr
	})
}

// Over TLS, a server's idle close starts with a close_notify that tls.Conn reads and reports
// as EOF: httpfx still learns the bound from it (about the server's 100ms), and no POST is lost
// in 4,000 sent as their connections reach that bound.
func TestTLSIdleCloseRaceLosesNoPost(t *testing.T) {
	t.Parallel()
	if testutil.RaceEnabled {
		// Under the race detector the server itself reads a request arriving within the
		// quarter of its 100ms timer that httpfx leaves it too late, after its own deadline:
		// a loss no client can help. Real idle timers are seconds long.
		t.Skip("the race detector slows this server past its own idle timer")
	}
	var (
		mu        sync.Mutex
		processed = map[string]int{}
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		processed[r.Header.Get("X-Request-Id")]++
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.EnableHTTP2 = false
	srv.StartTLS()
	defer srv.Close()
	var (
		client *http.Client
		stats  *httpfx.Stats
	)
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, trustServer(srv), fx.Populate(&client, &stats))
	app.RequireStart()
	addr := srv.Listener.Addr().String()
	warm := learnIdleBound(t, client, stats, srv.URL, addr, func(id string) error {
		_, err := postOnce(client, srv.URL, id)
		return err
	})
	if b := stats.Snapshot().IdleBounds[addr]; b < 90*time.Millisecond || b > 200*time.Millisecond {
		t.Errorf("learned %v, want about the server's 100ms", b)
	}
	res := postRace(t, client, srv.URL, "", 80, 100*time.Millisecond, 10*time.Second, 50)
	s := stats.Snapshot()
	app.RequireStop()
	for _, err := range res.failures {
		t.Errorf("POST failed: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if int64(len(processed)) != res.sent+int64(warm) {
		t.Errorf("the server processed %d request ids, %d POSTs were sent", len(processed), res.sent+int64(warm))
	}
	for id, n := range processed {
		if n != 1 {
			t.Errorf("%s processed %d times, want once", id, n)
		}
	}
	t.Logf("%d POSTs, %d failed; replayed %d, retired %v, connections opened %d, handshakes %d full, %d resumed",
		res.sent, len(res.failures), s.Replayed, s.ConnsRetired, s.ConnsOpened, s.HandshakesFull, s.HandshakesResumed)
}
