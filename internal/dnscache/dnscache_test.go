package dnscache

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// resolver answers with addrs until hang or fail is set; it counts the lookups.
type resolver struct {
	addrs []netip.Addr
	hang  atomic.Bool // a lookup waits until its context ends
	fail  atomic.Bool // a lookup fails at once
	calls atomic.Int64
}

func (r *resolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	r.calls.Add(1)
	switch {
	case r.hang.Load():
		<-ctx.Done()
		return nil, ctx.Err()
	case r.fail.Load():
		return nil, errors.New("SERVFAIL")
	}
	return r.addrs, nil
}

// listener accepts connections on 127.0.0.1 until the test ends.
func listener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// A name known to the cache never waits for a lookup while its last good answer is within
// TTL+StaleTTL, however long the resolver hangs; background refreshes run only between Start
// and Close.
func TestKnownNameNeverWaits(t *testing.T) {
	port := listener(t)
	r := &resolver{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	c := New(Config{TTL: 100 * time.Millisecond, StaleTTL: 10 * time.Second}, r, nil)
	c.Start()
	defer c.Close(time.Second)
	dial := func() time.Duration {
		began := time.Now()
		conn, err := c.Dial(context.Background(), "tcp", "svc.test:"+port)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		return time.Since(began)
	}
	dial() // the first lookup
	r.hang.Store(true)
	for range 6 { // past 3/4 of TTL, past TTL, well past it
		time.Sleep(40 * time.Millisecond)
		if took := dial(); took > time.Second {
			t.Fatalf("a dial of a known name waited %v for the hanging resolver", took)
		}
	}
}

// A refresh failure holds the next refresh back for NegativeTTL, also while the answer is
// still fresh: a failing resolver gets one query per NegativeTTL, not one per dial.
func TestRefreshBacksOffAfterFailure(t *testing.T) {
	port := listener(t)
	r := &resolver{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	c := New(Config{TTL: 4 * time.Second, StaleTTL: time.Minute}, r, nil)
	c.Start()
	defer c.Close(time.Second)
	if conn, err := c.Dial(context.Background(), "tcp", "svc.test:"+port); err == nil {
		conn.Close()
	}
	c.mu.Lock()
	c.names["svc.test"].refreshAt.Store(c.now()) // due for a refresh now, still fresh
	c.mu.Unlock()
	r.fail.Store(true)
	before := r.calls.Load()
	for range 50 {
		conn, err := c.Dial(context.Background(), "tcp", "svc.test:"+port)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		time.Sleep(time.Millisecond)
	}
	if n := r.calls.Load() - before; n != 1 {
		t.Errorf("%d lookups during the back-off, want 1", n)
	}
}

// Without Start, nothing runs in the background: a name due for a refresh keeps its answer
// until it is no longer usable, and a dial then looks it up itself.
func TestNoBackgroundBeforeStart(t *testing.T) {
	port := listener(t)
	r := &resolver{addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	c := New(Config{TTL: 20 * time.Millisecond}, r, nil)
	defer c.Close(time.Second)
	for range 5 {
		conn, err := c.Dial(context.Background(), "tcp", "svc.test:"+port)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		time.Sleep(10 * time.Millisecond)
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			t.Fatalf("a goroutine runs before Start: %v", err)
		}
	}
	if r.calls.Load() < 2 {
		t.Errorf("%d lookups, want the dials past TTL to look the name up again", r.calls.Load())
	}
}

// Each address of a name gets a share of the DialTimeout, as net.Dialer gives it, so that an
// unreachable first address cannot use all of it.
func TestDialShareOfTimeout(t *testing.T) {
	c := New(Config{DialTimeout: 8 * time.Second}, nil, nil)
	var got []time.Duration
	c.dialAddr = func(ctx context.Context, _, addr string) (net.Conn, error) {
		d, _ := ctx.Deadline()
		got = append(got, time.Until(d).Round(time.Second))
		return nil, errors.New("unreachable")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	ips := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")}
	c.dialSerial(ctx, "tcp", ips, 80)
	if len(got) != 4 || got[0] > 3*time.Second || got[0] < time.Second {
		t.Errorf("deadlines of the four addresses: %v; want the first about a quarter of 8s", got)
	}
}

// Close waits for a refresh that ignores its cancellation no longer than its grace, says it
// left one running, and drops its late answer; the refresh ends when the resolver returns.
func TestCloseLeavesStuckLookup(t *testing.T) {
	port := listener(t)
	r := &testutil.IgnoringResolver{Release: make(chan struct{})}
	gone := make(chan string, 1)
	c := New(Config{TTL: time.Hour, StaleTTL: time.Hour}, r, func(host string, _ []netip.Addr) { gone <- host })
	c.Start()
	conn, err := c.Dial(context.Background(), "tcp", "svc.test:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c.mu.Lock()
	c.names["svc.test"].refreshAt.Store(c.now()) // due now
	c.mu.Unlock()
	c.Due(conn.(*Conn))
	for r.Calls.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	if left := c.Close(50 * time.Millisecond); left != 1 {
		t.Errorf("Close left %d lookups running, want 1", left)
	}
	close(r.Release) // the refresh returns now; goleak checks it ends
	c.mu.Lock()
	for c.running > 0 {
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
		c.mu.Lock()
	}
	c.mu.Unlock()
	select {
	case host := <-gone:
		t.Errorf("the answer of a lookup that outlived Close reached onGone (%s)", host)
	default:
	}
	if left := c.Close(time.Second); left != 0 {
		t.Errorf("a second Close left %d running", left)
	}
}
