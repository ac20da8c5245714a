package httpfx_test

import (
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

// namedServer answers with its name.
func namedServer(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
}

// twoAddrs starts two servers on one port: "A" on 127.0.0.1 and "B" on 127.0.0.2 (both
// loopback), so that a DNS change moves a name from one to the other.
func twoAddrs(t *testing.T) (port string, a, b *testutil.Server) {
	t.Helper()
	for range 20 {
		la, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ = net.SplitHostPort(la.Addr().String())
		lb, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err != nil {
			la.Close()
			continue // the port is taken on 127.0.0.2: try another
		}
		return port, testutil.NewServerOn(t, la, namedServer("A")), testutil.NewServerOn(t, lb, namedServer("B"))
	}
	t.Skip("no port free on both 127.0.0.1 and 127.0.0.2")
	return "", nil, nil
}

// withResolver supplies r to the module.
func withResolver(r httpfx.Resolver) fx.Option {
	return fx.Supply(fx.Annotate(r, fx.As(new(httpfx.Resolver))))
}

// followDNS warms the pool with connections to "A", switches DNS, then sends GETs from 4
// callers until every caller has seen "B" 10 times in a row, and returns how long that took;
// every request must succeed. It is bounded by 10s.
func followDNS(t *testing.T, c *http.Client, url string, switchTo func()) time.Duration {
	t.Helper()
	var warm sync.WaitGroup
	for range 4 { // warm: a connection to A per caller in the pool
		warm.Add(1)
		go func() {
			defer warm.Done()
			for range 5 {
				if got := mustGet(t, c, url); got != "A" {
					t.Errorf("before the switch: %q, want A", got)
				}
			}
		}()
	}
	warm.Wait()
	switchTo()
	switched := time.Now()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		settled time.Duration
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inARow := 0
			for time.Since(switched) < 10*time.Second && inARow < 10 {
				got, err := get(c, url)
				if err != nil {
					t.Errorf("request failed after the DNS change: %v", err)
					return
				}
				if got == "B" {
					inARow++
				} else {
					inARow = 0
				}
				time.Sleep(5 * time.Millisecond)
			}
			mu.Lock()
			settled = max(settled, time.Since(switched))
			mu.Unlock()
			if inARow < 10 {
				t.Errorf("still reaching the old address 10s after the DNS change")
			}
		}()
	}
	wg.Wait()
	return settled
}

// Connections follow a DNS change: through the DNS cache's refresh, connections to the
// address that DNS dropped are retired (DNSTTL); without the cache, through MaxConnLifetime.
// No request fails meanwhile.
func TestTrafficFollowsDNS(t *testing.T) {
	tests := []struct {
		name       string
		give       func(*httpfx.Config)
		wantReason string
	}{
		{"DNS cache", func(c *httpfx.Config) { c.DNSTTL, c.MaxConnLifetime = 200*time.Millisecond, 0 }, httpfx.RetiredAddressGone},
		{"lifetime, no cache", func(c *httpfx.Config) { c.DNSTTL, c.MaxConnLifetime = 0, 300*time.Millisecond }, httpfx.RetiredLifetime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, a, b := twoAddrs(t)
			r := new(testutil.Resolver)
			r.Set("svc.test", "127.0.0.1")
			var g graph
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withResolver(r), withConfig(tt.give))
			app.RequireStart()
			took := followDNS(t, g.Client, "http://svc.test:"+port+"/", func() { r.Set("svc.test", "127.0.0.2") })
			s := g.Stats.Snapshot()
			if s.ConnsRetired[tt.wantReason] == 0 {
				t.Errorf("retired %v, want some for %s", s.ConnsRetired, tt.wantReason)
			}
			t.Logf("all callers on the new address %v after the change; retired %v, replayed %d", took, s.ConnsRetired, s.Replayed)
			app.RequireStop()
			a.RequireNoConns(t)
			b.RequireNoConns(t)
		})
	}
}

// The DNS cache serves the last good answer while the resolver fails (for DNSStaleTTL),
// merges concurrent lookups of a name, and remembers a failure briefly.
func TestDNSCache(t *testing.T) {
	t.Parallel()
	u := testutil.NewServer(t, namedServer("A"))
	_, port, _ := net.SplitHostPort(u.Listener.Addr().String())
	url := func(host string) string { return "http://" + host + ":" + port + "/" }
	r := new(testutil.Resolver)
	r.Set("svc.test", "127.0.0.1")
	r.Set("burst.test", "127.0.0.1")
	start := func(t *testing.T, ttl time.Duration) *graph {
		var g graph
		app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withResolver(r),
			withConfig(func(c *httpfx.Config) { c.DNSTTL, c.DNSStaleTTL = ttl, time.Minute }))
		app.RequireStart()
		t.Cleanup(app.RequireStop)
		return &g
	}

	t.Run("concurrent lookups of a name are merged", func(t *testing.T) {
		g := start(t, time.Minute)
		before := r.Calls.Load()
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mustGet(t, g.Client, url("burst.test"))
			}()
		}
		wg.Wait()
		if n := r.Calls.Load() - before; n != 1 {
			t.Errorf("16 concurrent first requests looked the name up %d times, want 1", n)
		}
	})
	g := start(t, 50*time.Millisecond)
	t.Run("the last good answer is served while the resolver fails", func(t *testing.T) {
		mustGet(t, g.Client, url("svc.test"))
		r.Fail(errors.New("SERVFAIL"))
		defer r.Fail(nil)
		time.Sleep(100 * time.Millisecond) // past DNSTTL
		httpfx.CloseIdleConnections(g.Client)
		if got, err := get(g.Client, url("svc.test")); err != nil || got != "A" {
			t.Errorf("with the resolver failing: %q, %v; want the cached answer used", got, err)
		}
		// A resolver that now hangs until its timeout: the stale answer is served at once,
		// while the refresh waits in the background.
		r.Hang(true)
		defer r.Hang(false)
		time.Sleep(1100 * time.Millisecond) // past the negative answer's second: a refresh is due
		httpfx.CloseIdleConnections(g.Client)
		began := time.Now()
		if got, err := get(g.Client, url("svc.test")); err != nil || got != "A" || time.Since(began) > 5*time.Second {
			t.Errorf("with the resolver hanging: %q, %v after %v; want the cached answer at once", got, err, time.Since(began))
		}
	})
	t.Run("a failure is remembered briefly", func(t *testing.T) {
		before := r.Calls.Load()
		for range 10 {
			_, err := get(g.Client, url("missing.test"))
			if err == nil || !strings.Contains(err.Error(), "httpfx: lookup missing.test") {
				t.Fatalf("GET of a name that does not resolve: %v, want an error naming it", err)
			}
		}
		if n := r.Calls.Load() - before; n > 2 {
			t.Errorf("10 requests to a failing name looked it up %d times, want 1 (2 if a second passed)", n)
		}
	})
}

// A dual-stack name still connects when one address family is unreachable.
func TestDualStackFallback(t *testing.T) {
	u := testutil.NewServer(t, namedServer("A")) // IPv4 only
	_, port, _ := net.SplitHostPort(u.Listener.Addr().String())
	r := new(testutil.Resolver)
	r.Set("dual.test", "::1", "127.0.0.1") // nothing listens on [::1]:port
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withResolver(r))
	app.RequireStart()
	if got, err := get(g.Client, fmt.Sprintf("http://dual.test:%s/", port)); err != nil || got != "A" {
		t.Errorf("GET = %q, %v; want A over IPv4", got, err)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// A resolver that hangs, as real outages do, never makes a request to a name it answered wait
// for a lookup while the answer is within DNSTTL+DNSStaleTTL: every dial past DNSTTL uses the
// last good answer at once, while the refresh waits in the background.
func TestHangingResolverStallsNoDial(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	_, port, _ := net.SplitHostPort(u.Listener.Addr().String())
	r := new(testutil.Resolver)
	r.Set("svc.test", "127.0.0.1")
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withResolver(r),
		withConfig(func(c *httpfx.Config) { c.DNSTTL, c.DNSStaleTTL = 200*time.Millisecond, 10*time.Second }))
	app.RequireStart()
	url := "http://svc.test:" + port + "/"
	mustGet(t, g.Client, url)
	r.Hang(true)
	defer r.Hang(false)
	var slowest time.Duration
	for range 10 { // over 500ms: past 3/4 of DNSTTL, past DNSTTL, well past it
		time.Sleep(50 * time.Millisecond)
		httpfx.CloseIdleConnections(g.Client) // a new dial for each request
		began := time.Now()
		mustGet(t, g.Client, url)
		slowest = max(slowest, time.Since(began))
	}
	if slowest > time.Second {
		t.Errorf("a request waited %v while the resolver hung, want no wait for a known name", slowest)
	}
	if r.Calls.Load() < 2 {
		t.Errorf("%d lookups: no refresh was tried", r.Calls.Load())
	}
	app.RequireStop()
}

// A background refresh stuck in a Resolver that ignores its cancellation does not hold stop:
// stop returns, saying it left the lookup running.
func TestStopLeavesStuckResolver(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	_, port, _ := net.SplitHostPort(u.Listener.Addr().String())
	r := &testutil.IgnoringResolver{Release: make(chan struct{})}
	defer close(r.Release) // before goleak's check: the lookup ends then
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), withResolver(r),
		withConfig(func(c *httpfx.Config) { c.DNSTTL = 40 * time.Millisecond }))
	app.RequireStart()
	url := "http://svc.test:" + port + "/"
	mustGet(t, g.Client, url)
	for r.Calls.Load() < 2 { // past 3/4 of DNSTTL, a request starts a refresh
		time.Sleep(20 * time.Millisecond)
		mustGet(t, g.Client, url)
	}
	var err error
	relWithin(t, 10*time.Second, "stop", func() { err = app.Stop(context.Background()) })
	if err == nil || !strings.Contains(err.Error(), "1 DNS lookup(s) of the Resolver still running") {
		t.Errorf("stop: %v; want it to say it left the lookup running", err)
	}
}
