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

	// observedFor is how long an idle bound learned from a server's closes holds: a burst of
	// closes (a server restarting) must not shorten the pool's reuse for good. A bound from a
	// Keep-Alive header holds until the next header says otherwise.
	observedFor = 10 * time.Minute

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

// at returns the time of ns on the clock.
func (c *clock) at(ns int64) time.Time { return c.epoch.Add(time.Duration(ns)) }

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
	h2c      bool          // the transport may speak HTTP/2 without TLS
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
	observedAt atomic.Int64 // on health's clock, when a close last taught or confirmed idleBound
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

// gotConn runs on the request's goroutine when it has its connection, before it writes. A
// connection that is reused and speaks HTTP/1.1 (an HTTP/2 one may carry other streams) is
// retired if it is connected to an address DNS dropped, past its lifetime, or idle for nearly
// its server's idle bound: nothing of the request has been written, so net/http sends it on
// another connection. Otherwise it is armed: the request's first write checks, as late as can
// be, that the server has not closed it (trackedConn.Write).
func (h *health) gotConn(info httptrace.GotConnInfo) {
	c := trackedOf(info.Conn)
	if c == nil {
		return
	}
	proto := c.proto.Load()
	if proto == protoUnknown {
		proto = h.protoOf(info.Conn)
		c.proto.Store(proto)
	}
	if !info.Reused {
		return
	}
	now := h.clock.now()
	if c.dns != nil {
		c.set.dns.due(c.host, c.dns, now)
	}
	if proto != protoH1 {
		return
	}
	reason := ""
	switch {
	case c.gone.Load():
		reason = RetiredAddressGone
	case c.expires != 0 && now >= c.expires:
		reason = RetiredLifetime
	case info.WasIdle && c.peer != nil && c.peer.retireAfter(now) > 0 && info.IdleTime >= c.peer.retireAfter(now):
		reason = RetiredIdle
	}
	if reason != "" {
		c.retire(reason)
		h.stats.replayed.Add(1) // net/http sends it again: only requests that can be are traced
		return
	}
	c.idleFor.Store(int64(info.IdleTime)) // zero if handed over straight from another request
	c.armed.Store(true)
}

// protoOf tells what a connection a request took speaks: HTTP/2 if TLS negotiated it, or if
// the transport speaks unencrypted HTTP/2 (which cannot be told from HTTP/1.1 here).
func (h *health) protoOf(c net.Conn) int32 {
	if tc, ok := c.(*tls.Conn); ok {
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			return protoH2
		}
		return protoH1
	}
	if h.h2c {
		return protoH2
	}
	return protoH1
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
	for v != "" {
		var part string
		part, v, _ = strings.Cut(v, ",")
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
	now := h.clock.now()
	for addr, p := range h.peers {
		if d := p.idleBound.Load(); d > 0 && p.retireAfter(now) > 0 {
			if out == nil {
				out = make(map[string]time.Duration)
			}
			out[addr] = time.Duration(d)
		}
	}
	return out
}

// learnObserved lowers p's idle bound to d, an idle time after which its server had closed a
// connection in the pool, unless a Keep-Alive header announced it. now is on health's clock.
func (p *peer) learnObserved(d time.Duration, now int64) {
	if d < learnMin || p.fromHeader.Load() {
		return
	}
	for {
		old := p.idleBound.Load()
		if old != 0 && old <= int64(d) && now-p.observedAt.Load() < int64(observedFor) {
			p.observedAt.Store(now) // confirmed: it holds for another observedFor
			return
		}
		if p.idleBound.CompareAndSwap(old, int64(d)) {
			p.observedAt.Store(now)
			return
		}
	}
}

// retireAfter is how long a connection to p may have been idle before it is retired: the
// idle bound less a margin of a quarter of it, at most maxMargin. Zero: no bound is known, or
// the one learned from closes is older than observedFor.
func (p *peer) retireAfter(now int64) time.Duration {
	b := time.Duration(p.idleBound.Load())
	if b <= 0 || (!p.fromHeader.Load() && now-p.observedAt.Load() >= int64(observedFor)) {
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
