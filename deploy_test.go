package httpfx_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
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

// fleet is several real nginx instances on 127.0.0.1, .2, .3… with one port, behind one name
// that a test resolver answers with all their addresses, as a service behind DNS.
type fleet struct {
	name  string // "svc.test"
	port  string
	url   string // http://svc.test:port
	nodes []*nginx
	res   *testutil.Resolver
}

// startFleet starts n nginx instances with keepalive (nginx's keepalive_timeout) on one port
// free on every address.
func startFleet(t *testing.T, n int, keepalive string) *fleet {
	t.Helper()
	nginxBinary(t)
	f := &fleet{name: "svc.test", res: new(testutil.Resolver)}
	var ips []string
	for i := range n {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", i+1))
	}
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ln.Close()
		free := true
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			f.port = port
			break
		}
	}
	if f.port == "" {
		t.Skip("no port free on every 127.0.0.x address")
	}
	for _, ip := range ips {
		f.nodes = append(f.nodes, startNginxAt(t, net.JoinHostPort(ip, f.port), keepalive))
	}
	f.res.Set(f.name, ips...)
	f.url = "http://" + net.JoinHostPort(f.name, f.port)
	return f
}

// deploy restarts every instance gracefully, one at a time, rounds times, with a pause after
// each of about pause (from half to one and a half times it), as a rolling deploy does.
func (f *fleet) deploy(t *testing.T, rounds int, pause time.Duration) {
	t.Helper()
	for range rounds {
		for _, n := range f.nodes {
			n.restart(t)
			time.Sleep(pause/2 + rand.N(pause))
		}
	}
}

// ids returns how many times the fleet logged each request id.
func (f *fleet) ids(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range f.nodes {
		for id, c := range n.ids(t) {
			out[id] += c
		}
	}
	return out
}

// rawDial dials the fleet's name as net.Dialer dials a name with several addresses: from the
// next address on, until one connects. It counts the connections it opens.
func (f *fleet) rawDial(opened *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var next atomic.Uint32
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips, err := f.res.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
		k := int(next.Add(1))
		var first error
		for i := range ips {
			c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ips[(k+i)%len(ips)], 0).Addr().String()+":"+port)
			if err == nil {
				opened.Add(1)
				return c, nil
			}
			if first == nil {
				first = err
			}
		}
		return nil, first
	}
}

// loadResult is what one client's callers saw.
type loadResult struct {
	sent, failed map[string]int // by kind of request
	errs         []string       // the first failures, for the log
}

// Kinds of requests of the load: a GET, a POST with an Idempotency-Key, and a POST without
// one (which may be sent again only if it provably never reached the server).
const (
	kindGET     = "GET"
	kindKeyPOST = "POST+key"
	kindPOST    = "POST"
)

// load sends requests from callers goroutines through c until stop is closed (each at most
// 20000 requests), a GET, a POST with a key and a POST without one in turn, each with an
// X-Request-Id that starts with prefix.
func load(c *http.Client, url, prefix string, callers int, stop <-chan struct{}) loadResult {
	var (
		mu  sync.Mutex
		res = loadResult{sent: map[string]int{}, failed: map[string]int{}}
		wg  sync.WaitGroup
	)
	kinds := []string{kindGET, kindKeyPOST, kindPOST}
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				kind := kinds[i%len(kinds)]
				id := fmt.Sprintf("%s-%d-%d", prefix, g, i)
				err := sendKind(c, url, kind, id)
				mu.Lock()
				res.sent[kind]++
				if err != nil {
					res.failed[kind]++
					if len(res.errs) < 5 {
						res.errs = append(res.errs, fmt.Sprintf("%s %s: %v", kind, id, err))
					}
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return res
}

// sendKind sends one request of kind with the request id id and reads its response.
func sendKind(c *http.Client, url, kind, id string) error {
	method, body := http.MethodGet, io.Reader(nil)
	if kind != kindGET {
		method, body = http.MethodPost, strings.NewReader(`{"charge":100}`)
	}
	req, err := http.NewRequest(method, url+"/"+kind, body)
	if err != nil {
		return err
	}
	req.Header.Set("X-Request-Id", id)
	if kind == kindKeyPOST {
		req.Header.Set("Idempotency-Key", id)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// A rolling deploy of an upstream, as a user meets it: three nginx instances behind one name,
// each restarted gracefully in turn, four rounds, while httpfx's zero-config client and a raw
// tuned transport (the reference, with the same pool size) send GETs and POSTs side by side.
// No request is processed twice; httpfx loses no GET and no POST with an Idempotency-Key (it
// sends them again), no more POSTs without one than the raw transport (those that may have
// been written are never sent again), opens no more than twice its connections, and learns no
// idle bound from the restarts' closes.
func TestRollingDeploy(t *testing.T) {
	t.Parallel()
	f := startFleet(t, 3, "75s")
	var (
		client *http.Client
		stats  *httpfx.Stats
	)
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, withResolver(f.res), fx.Populate(&client, &stats))
	app.RequireStart()
	var rawOpened atomic.Int64
	raw := &http.Transport{
		DialContext:         f.rawDial(&rawOpened),
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 512,
		MaxConnsPerHost:     512,
		IdleConnTimeout:     90 * time.Second,
	}
	defer raw.CloseIdleConnections()
	rawClient := &http.Client{Transport: raw, Timeout: 30 * time.Second}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var got, ref loadResult
	wg.Add(2)
	go func() { defer wg.Done(); got = load(client, f.url, "httpfx", 16, stop) }()
	go func() { defer wg.Done(); ref = load(rawClient, f.url, "raw", 16, stop) }()
	time.Sleep(200 * time.Millisecond) // the pools are warm
	f.deploy(t, 4, 100*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	s := stats.Snapshot()
	app.RequireStop()

	for id, n := range f.ids(t) {
		if n > 1 {
			t.Errorf("request %s processed %d times", id, n)
		}
	}
	t.Logf("httpfx: sent %v, failed %v, %d connections opened, replayed %d, retired %v, idle bounds %v; first failures %q",
		got.sent, got.failed, s.ConnsOpened, s.Replayed, s.ConnsRetired, s.IdleBounds, got.errs)
	t.Logf("raw:    sent %v, failed %v, %d connections opened; first failures %q", ref.sent, ref.failed, rawOpened.Load(), ref.errs)
	if got.failed[kindGET] != 0 || got.failed[kindKeyPOST] != 0 {
		t.Errorf("httpfx lost %d GETs and %d POSTs with an Idempotency-Key: want none, retried", got.failed[kindGET], got.failed[kindKeyPOST])
	}
	if got.failed[kindPOST] > ref.failed[kindPOST]+ref.failed[kindPOST]/4+2 {
		t.Errorf("httpfx lost %d POSTs, the raw transport %d", got.failed[kindPOST], ref.failed[kindPOST])
	}
	if s.ConnsOpened > 2*rawOpened.Load()+8 {
		t.Errorf("httpfx opened %d connections, the raw transport %d: want at most twice as many", s.ConnsOpened, rawOpened.Load())
	}
	if b, ok := s.IdleBounds[net.JoinHostPort(f.name, f.port)]; ok && b < 60*time.Second {
		t.Errorf("httpfx learned an idle bound of %v from the restarts (nginx keeps idle connections 75s)", b)
	}
}
