package httpfx

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Why a connection was retired. They are the keys of Snapshot.ConnsRetired.
const (
	// RetiredIdle: it had been idle for nearly as long as its server keeps an idle
	// connection (learned per address), so the server could close it under the next request.
	RetiredIdle = "idle"
	// RetiredLifetime: it was older than Config.MaxConnLifetime.
	RetiredLifetime = "lifetime"
	// RetiredAddressGone: DNS no longer returns the address it is connected to.
	RetiredAddressGone = "address_gone"
	// RetiredServerClosed: the server had closed it (or sent data unasked) while it was idle.
	RetiredServerClosed = "server_closed"
	// RetiredDead: net/http closed it after its peer stopped answering (an HTTP/2 ping, or a
	// write, unanswered for HTTP2PingTimeout).
	RetiredDead = "dead"
)

const (
	// learnMin is the shortest idle time after which a server's close teaches an idle bound:
	// a close right after a response is the server's choice for that response, not a timer.
	learnMin = 10 * time.Millisecond

	// peekAfter is how long a connection must have been idle before a request that takes it
	// first checks, with one non-blocking system call, that the server has not closed it.
	// Connections reused sooner are never checked: a server's idle timer is longer.
	peekAfter = 10 * time.Millisecond

	// maxMargin bounds how much sooner than its server httpfx retires an idle connection.
	maxMargin = time.Second

	// closeSoon is how soon after unasked data a close by net/http counts as the server
	// closing an idle connection (a TLS server's close_notify alert).
	closeSoon = 100 * time.Millisecond

	// maxReplays bounds how often one request that provably never reached the server is sent
	// again: each time, the pool had handed it a connection the server had just closed.
	maxReplays = 3

	// maxPeers bounds the addresses whose idle bound httpfx remembers.
	maxPeers = 4096
)

// clock reads the monotonic clock as nanoseconds since the owner was built: one cheap read,
// with no wall clock and no allocation.
type clock struct{ epoch time.Time }

func (c *clock) now() int64 { return int64(time.Since(c.epoch)) }

// health keeps the owned transport's connections healthy between start and stop: it learns
// each address's idle bound, and retires a connection that a request takes from the idle pool
// when it is past that bound, past its lifetime, connected to an address DNS dropped, or
// already closed by the server. A retired connection is closed before any byte of the request
// is written to it, so net/http sends the request on another connection: it does so for a
// request whose body can be rewound (no body, or GetBody), and only those requests carry the
// trace that retires. It is safe for concurrent use.
type health struct {
	stats    *Stats
	clock    *clock
	lifetime time.Duration // Config.MaxConnLifetime
	deadAt   time.Duration // a write unanswered this long before net/http closes: dead
	trace    httptrace.ClientTrace

	mu    sync.Mutex
	peers map[string]*peer // by dialled address
}

// peer is what httpfx knows of one dialled address.
type peer struct {
	addr       string
	idleBound  atomic.Int64 // nanoseconds the server keeps an idle connection; zero: unknown
	fromHeader atomic.Bool  // idleBound came from a Keep-Alive header
}

func newHealth(cfg Config, stats *Stats, clk *clock) *health {
	h := &health{stats: stats, clock: clk, lifetime: cfg.MaxConnLifetime}
	if cfg.HTTP2SendPingTimeout > 0 {
		p := cfg.HTTP2PingTimeout
		if p == 0 {
			p = 15 * time.Second // net/http's default
		}
		h.deadAt = p * 9 / 10
	}
	h.trace.GotConn = h.gotConn
	return h
}

// traced returns ctx with the trace that checks the connection a request takes. The trace is
// shared by every request; a context that has a trace of its own gets a copy, because
// httptrace composes the two into the new one.
func (h *health) traced(ctx context.Context) context.Context {
	if httptrace.ContextClientTrace(ctx) != nil {
		t := h.trace
		return httptrace.WithClientTrace(ctx, &t)
	}
	return httptrace.WithClientTrace(ctx, &h.trace)
}

// rewindable reports whether net/http can send req again on another connection: it has no
// body, or GetBody rewinds it.
func rewindable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// neverSent reports whether err proves that the request never reached the server, so that it
// can be sent again whatever its method (RFC 9110 §9.2.2 allows it when the client "can detect
// that the original request was never applied"). Two failures prove it: net/http's "server
// closed idle connection", which it returns only when the server's close of a pooled
// connection was read before the request was counted on it, and so before any byte of it was
// written (net/http replays those only for idempotent methods); and an *unsentError, a close
// or reset after the request was written but before the server's TCP acknowledged any byte of
// it (TCP_INFO, Linux). A reset or close after the server acknowledged the request proves
// nothing: the server may have read it. Such requests are never replayed here.
func neverSent(err error) bool {
	var u *unsentError
	return err.Error() == "http: server closed idle connection" || errors.As(err, &u)
}

// rewind returns a copy of req, which net/http has sent and closed the body of, with its body
// rewound, or false if it cannot be rewound.
func rewind(req *http.Request) (*http.Request, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	b, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	r := *req
	r.Body = b
	return &r, true
}

// gotConn runs on the request's goroutine when it has its connection, before it writes.
func (h *health) gotConn(info httptrace.GotConnInfo) {
	c := trackedOf(info.Conn)
	if c == nil || !info.Reused {
		return
	}
	now := h.clock.now()
	if c.dns != nil {
		c.set.dns.due(c.host, c.dns, now)
	}
	if !info.WasIdle {
		return // an HTTP/2 connection with streams: nothing to retire
	}
	h2 := isH2(info.Conn)
	if !h2 && !c.h1.Load() {
		c.h1.Store(true) // its writes check for a server's close (trackedConn.Write)
	}
	reason := ""
	switch {
	case c.gone.Load():
		reason = RetiredAddressGone
	case c.expires != 0 && now >= c.expires:
		reason = RetiredLifetime
	case c.peer != nil && c.peer.retireAfter() > 0 && info.IdleTime >= c.peer.retireAfter():
		reason = RetiredIdle
	case c.peerClosed.Load():
		reason = RetiredServerClosed
	}
	if reason == "" || h2 {
		return
	}
	c.retire(reason)
	h.stats.replayed.Add(1)
}

// keepAlive learns the idle bound a server announces in a "Keep-Alive: timeout=N" header, for
// the address req's connection dialled (unknown addresses, such as a proxy's origin, are
// left alone).
func (h *health) keepAlive(u *url.URL, v string) {
	secs, ok := keepAliveTimeout(v)
	if !ok {
		return
	}
	h.mu.Lock()
	p := h.peers[net.JoinHostPort(u.Hostname(), portOf(u))]
	h.mu.Unlock()
	if p == nil {
		return
	}
	d := int64(time.Duration(secs) * time.Second)
	if p.idleBound.Load() != d || !p.fromHeader.Load() {
		p.idleBound.Store(d)
		p.fromHeader.Store(true)
	}
}

// keepAliveTimeout returns the timeout parameter of a Keep-Alive header value, in seconds.
func keepAliveTimeout(v string) (int, bool) {
	for _, part := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "timeout") {
			n, err := strconv.Atoi(strings.TrimSpace(val))
			return n, err == nil && n > 0
		}
	}
	return 0, false
}

// peerFor returns the record of addr, new if needed, or nil past maxPeers.
func (h *health) peerFor(addr string) *peer {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.peers[addr]; p != nil {
		return p
	}
	if len(h.peers) >= maxPeers {
		return nil
	}
	if h.peers == nil {
		h.peers = make(map[string]*peer)
	}
	p := &peer{addr: addr}
	h.peers[addr] = p
	return p
}

// idleBounds returns the learned idle bound of every address that has one.
func (h *health) idleBounds() map[string]time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out map[string]time.Duration
	for addr, p := range h.peers {
		if d := p.idleBound.Load(); d > 0 {
			if out == nil {
				out = make(map[string]time.Duration)
			}
			out[addr] = time.Duration(d)
		}
	}
	return out
}

// learnObserved lowers p's idle bound to d, an idle time after which its server closed a
// connection, unless a Keep-Alive header announced it.
func (p *peer) learnObserved(d time.Duration) {
	if d < learnMin || p.fromHeader.Load() {
		return
	}
	for {
		old := p.idleBound.Load()
		if old != 0 && old <= int64(d) {
			return
		}
		if p.idleBound.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// retireAfter is how long a connection to p may have been idle before it is retired: the
// idle bound less a margin of a quarter of it, at most maxMargin. Zero: no bound is known.
func (p *peer) retireAfter() time.Duration {
	b := time.Duration(p.idleBound.Load())
	if b <= 0 {
		return 0
	}
	return b - min(b/4, maxMargin)
}

// trackedOf returns the owned connection under c, a connection net/http reports.
func trackedOf(c net.Conn) *trackedConn {
	switch c := c.(type) {
	case *trackedConn:
		return c
	case *tls.Conn:
		tc, _ := c.NetConn().(*trackedConn)
		return tc
	}
	return nil
}

// isH2 reports whether c negotiated HTTP/2.
func isH2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}
