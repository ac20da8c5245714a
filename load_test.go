package httpfx_test

// Load tests: a bounded soak through the shared client, and a stop in the middle of it. They
// check correctness under load (no error, bounded pool, nothing left behind), never speed.

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
)

// loadPlan sizes a load run. Every run is bounded by its request count and by timeCap,
// whichever comes first.
type loadPlan struct {
	goroutines int
	requests   int // in total, split evenly across the goroutines
	timeCap    time.Duration
}

// soakPlan is 20k requests from 256 goroutines, scaled down under -race (which makes each
// request several times dearer, HTTP/2 over TLS most) so that the suite stays fast on 2 cores.
func soakPlan() loadPlan {
	return loadPlan{goroutines: 256, requests: 10240, timeCap: 30 * time.Second}
}

// soakPool bounds the pool below the number of goroutines, so that the bound matters: the
// goroutines queue for connections instead of opening more.
const soakPool = 64

// churnSlack is how many connections the pool may replace during a soak without being said
// to churn. net/http drops a connection, instead of reusing it, when the write of its last
// request is not confirmed within 50ms of the response (maxWriteWaitBeforeConnReuse; its own
// tests raise it "to avoid flakiness"); on a loaded 2-core machine under -race that happens
// to a connection now and then. A pool that churns replaces thousands.
const churnSlack = 8

// soakSlack is how far the goroutine and file descriptor counts may end above their baseline
// after stop. The client must account for none of it; it allows for the runtime and the test
// framework starting a goroutine or opening a descriptor of their own (a timer goroutine, the
// race detector's, a test log file) between the two counts.
const soakSlack = 2

// loadCounts are the outcomes of a load run.
type loadCounts struct {
	sent, ok, refused, failed atomic.Int64

	mu   sync.Mutex
	errs []error // the first few unexpected errors
}

func (lc *loadCounts) fail(err error) {
	lc.failed.Add(1)
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if len(lc.errs) < 5 {
		lc.errs = append(lc.errs, err)
	}
}

func (lc *loadCounts) String() string {
	return fmt.Sprintf("sent %d, completed %d, refused %d, failed %d %v",
		lc.sent.Load(), lc.ok.Load(), lc.refused.Load(), lc.failed.Load(), lc.errs)
}

// runLoad sends perG requests from each of n goroutines through c, reading every body, and
// stops early at deadline. It returns when every goroutine has.
func runLoad(c *http.Client, url string, n, perG int, deadline time.Time, lc *loadCounts) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perG && time.Now().Before(deadline); i++ {
				lc.sent.Add(1)
				body, err := get(c, url)
				switch {
				case errors.Is(err, httpfx.ErrClosed):
					lc.refused.Add(1)
				case err != nil:
					lc.fail(err)
				case body != "ok":
					lc.fail(fmt.Errorf("body %q, want ok", body))
				default:
					lc.ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
}

// soakUpstream is one kind of upstream the soak runs against.
type soakUpstream struct {
	name  string
	tls   bool
	http2 bool
}

var soakUpstreams = []soakUpstream{
	{name: "HTTP/1.1"},
	{name: "TLS HTTP/1.1", tls: true},
	{name: "TLS HTTP/2", tls: true, http2: true},
}

// start starts the upstream and returns it with the options that make the owned transport
// trust it: its certificate is added to the owned transport's TLS config, in place.
func (su soakUpstream) start(t *testing.T) (*testutil.Server, []fx.Option) {
	if !su.tls {
		return testutil.NewServer(t, okHandler()), nil
	}
	u := testutil.NewUnstartedServer(t, okHandler())
	u.EnableHTTP2 = su.http2
	// The HTTP/2 upstream allows more concurrent streams than the soak has callers (Go's
	// server allows 250), so that one connection can carry them all. With fewer, net/http's
	// HTTP/2 client dials whenever every connection is at its stream limit and throws the new
	// one away if a stream frees up first; the README says so.
	u.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 1000}
	u.StartTLS()
	t.Cleanup(u.Close)
	roots := x509.NewCertPool()
	roots.AddCert(u.Certificate())
	return u, []fx.Option{fx.Decorate(func(tr *http.Transport) *http.Transport {
		tr.TLSClientConfig.RootCAs = roots
		return tr
	})}
}

func soakConfig(c *httpfx.Config) { c.MaxConnsPerHost, c.MaxIdleConnsPerHost = soakPool, soakPool }

// A bounded soak through the shared client, against a plain, a TLS and an HTTP/2 upstream: no
// request fails; the pool never opens more connections than its bound and closes none while
// it runs, so TIME_WAIT sockets do not grow with the number of requests; after stop, the
// goroutines and file descriptors are back to their baseline.
func TestSoak(t *testing.T) {
	plan := soakPlan()
	for _, su := range soakUpstreams {
		t.Run(su.name, func(t *testing.T) {
			u, opts := su.start(t)
			port := portOf(u.Listener.Addr())
			baseG, baseFD := runtime.NumGoroutine(), openFDs()
			app, g := relApp(t, soakConfig, opts...)

			// The most connections the client holds open at once, sampled while the load runs.
			var maxOpen atomic.Int64
			sampled := make(chan struct{})
			stopSampling := make(chan struct{})
			go func() {
				defer close(sampled)
				for {
					if n := g.Stats.Snapshot().ConnsOpen; n > maxOpen.Load() {
						maxOpen.Store(n)
					}
					select {
					case <-stopSampling:
						return
					case <-time.After(time.Millisecond):
					}
				}
			}()

			// Two halves, to see whether TIME_WAIT grows with the requests sent.
			var lc loadCounts
			deadline := time.Now().Add(plan.timeCap)
			perG := plan.requests / plan.goroutines
			runLoad(g.Client, u.URL, plan.goroutines, perG/2, deadline, &lc)
			tw1 := timeWait(port)
			runLoad(g.Client, u.URL, plan.goroutines, perG-perG/2, deadline, &lc)
			tw2 := timeWait(port)
			close(stopSampling)
			<-sampled

			s := g.Stats.Snapshot()
			replaced := s.ConnsOpened - s.ConnsOpen // connections closed while the load ran
			t.Logf("%v; %d connections opened, at most %d open at once, %d closed during the run (server accepted %d); reuse ratio %.4f; TIME_WAIT on port %d: %d after the first half, %d after the second",
				&lc, s.ConnsOpened, maxOpen.Load(), replaced, u.Opened(), s.ReuseRatio(), port, tw1, tw2)
			if lc.sent.Load() < int64(plan.requests) {
				t.Logf("the time cap of %v ended the run after %d of %d requests", plan.timeCap, lc.sent.Load(), plan.requests)
			}
			if lc.failed.Load() != 0 || lc.refused.Load() != 0 || lc.ok.Load() != lc.sent.Load() {
				t.Errorf("want every request to complete: %v", &lc)
			}
			if s.Requests != lc.sent.Load() || s.Failed != 0 || s.InFlight != 0 {
				t.Errorf("stats = %+v, want %d requests, none failed or in flight", s, lc.sent.Load())
			}
			if maxOpen.Load() > soakPool {
				t.Errorf("%d connections open at once, want at most MaxConnsPerHost = %d", maxOpen.Load(), soakPool)
			}
			if s.ConnsOpened > soakPool+churnSlack || replaced > churnSlack {
				why := "the pool must keep the connections it opens"
				if su.http2 {
					why = "a cold burst must not dial a connection per waiting request and then throw away all but the one HTTP/2 needs " +
						"(net/http cannot know the protocol before the first TLS handshake ends; see golang/go#27753)"
				}
				t.Errorf("%d connections opened and %d of them closed while the load ran; want at most MaxConnsPerHost (%d) opened "+
					"and at most %d replaced: %s", s.ConnsOpened, replaced, soakPool, churnSlack, why)
			}
			if tw2 > tw1+churnSlack {
				t.Errorf("TIME_WAIT sockets on the server's port grew from %d to %d with the second half of the requests, want no growth", tw1, tw2)
			}

			app.RequireStop()
			testutil.WaitFor(t, "the server sees all client connections closed", func() bool { return u.Open() == 0 })
			leakedG := settleGoroutines(baseG) - baseG
			leakedFD := settleFDs(baseFD) - baseFD
			t.Logf("after stop: %+d goroutines, %+d file descriptors against the baseline", leakedG, leakedFD)
			if leakedG > soakSlack {
				t.Errorf("%d more goroutines than before the app, want at most %d", leakedG, soakSlack)
			}
			if baseFD >= 0 && leakedFD > soakSlack {
				t.Errorf("%d more file descriptors open than before the app, want at most %d", leakedFD, soakSlack)
			}
			u.RequireNoConns(t)
		})
	}
}

// Stop in the middle of the soak: every admitted request completes within the drain bound,
// every other one is refused with ErrClosed, the counts add up to what was sent, and nothing
// is cut or left behind. The figures are logged for the README. (The pool's bound is
// TestSoak's to check.)
func TestSoakWithStop(t *testing.T) {
	plan := soakPlan()
	for _, su := range []soakUpstream{soakUpstreams[0], soakUpstreams[2]} {
		t.Run(su.name, func(t *testing.T) {
			u, opts := su.start(t)
			baseG, baseFD := runtime.NumGoroutine(), openFDs()
			app, g := relApp(t, soakConfig, opts...)

			var lc loadCounts
			done := make(chan struct{})
			go func() {
				defer close(done)
				runLoad(g.Client, u.URL, plan.goroutines, plan.requests/plan.goroutines, time.Now().Add(plan.timeCap), &lc)
			}()
			half := int64(plan.requests / 2)
			testutil.WaitFor(t, "half of the requests are admitted", func() bool {
				select {
				case <-done:
					return true
				default:
					return g.Stats.Snapshot().Requests >= half
				}
			})
			inFlight := g.Stats.Snapshot().InFlight
			began := time.Now()
			var stopErr error
			relWithin(t, hangBound+5*time.Second, "stop", func() { stopErr = app.Stop(t.Context()) })
			drain := time.Since(began)
			relWithin(t, hangBound, "the senders after stop", func() { <-done })

			s := g.Stats.Snapshot()
			testutil.WaitFor(t, "the server sees all client connections closed", func() bool { return u.Open() == 0 })
			leakedG := settleGoroutines(baseG) - baseG
			leakedFD := settleFDs(baseFD) - baseFD
			t.Logf("soak with stop (%s, %d goroutines): sent %d, completed %d, rejected %d, failed %d, cut %d; "+
				"%d in flight when stop began, stop took %v; %d connections opened; after stop %+d goroutines, %+d fds",
				su.name, plan.goroutines, lc.sent.Load(), lc.ok.Load(), lc.refused.Load(), lc.failed.Load(), s.Cut,
				inFlight, drain.Round(time.Millisecond), s.ConnsOpened, leakedG, leakedFD)

			if stopErr != nil {
				t.Errorf("stop: %v, want nil: nothing may be cut", stopErr)
			}
			if lc.failed.Load() != 0 || lc.sent.Load() != lc.ok.Load()+lc.refused.Load() {
				t.Errorf("want sent = completed + refused and nothing else: %v", &lc)
			}
			if s.Requests != lc.ok.Load() || s.Rejected != lc.refused.Load() || s.Cut != 0 || s.Failed != 0 || s.InFlight != 0 {
				t.Errorf("stats = %+v; want requests = completed (%d), rejected = refused (%d), none cut, failed or in flight",
					s, lc.ok.Load(), lc.refused.Load())
			}
			if lc.ok.Load() < half || lc.refused.Load() == 0 {
				t.Errorf("%d completed, %d refused: stop did not come in the middle of the load", lc.ok.Load(), lc.refused.Load())
			}
			if leakedG > soakSlack {
				t.Errorf("%d more goroutines than before the app, want at most %d", leakedG, soakSlack)
			}
			if baseFD >= 0 && leakedFD > soakSlack {
				t.Errorf("%d more file descriptors open than before the app, want at most %d", leakedFD, soakSlack)
			}
			u.RequireNoConns(t)
		})
	}
}
