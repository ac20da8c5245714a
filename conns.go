package httpfx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// errDialAfterStop is the error of a dial the owned transport attempts after stop.
var errDialAfterStop = fmt.Errorf("%w: no new connection after stop", ErrClosed)

// errRetired is the error of a write to a connection httpfx retired or found closed by the
// server: nothing was written, so net/http sends the request on another connection if it can.
var errRetired = errors.New("httpfx: connection retired before the request was written")

// dialFunc is the type of http.Transport.DialContext.
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// connSet holds the open connections of the owned transport, so that stop can close the ones
// still in use, which http.Transport cannot, and health can retire them. It changes only when
// a connection is dialled or closed, never per request. It is safe for concurrent use.
type connSet struct {
	stats  *Stats
	health *health
	dns    *dnsCache
	onLast func(addr string) // called, outside the lock, when the last connection to addr closes
	obs    *observers        // nil unless observed

	mu      sync.Mutex
	conns   map[*trackedConn]struct{}
	perAddr map[string]int // open connections by dialled address
	closed  bool           // no more dials: stop has closed the set
}

// wrap returns a dial function that counts and records every connection dial opens, and
// refuses to dial once the set is closed.
func (s *connSet) wrap(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if s.isClosed() {
			return nil, errDialAfterStop
		}
		p, _ := ctx.Value(prewarmKey{}).(*prewarmDial) // a dial of prewarm: cold path only
		if p != nil {
			p.began()
		}
		if cl := callOf(ctx); cl != nil { // a dial for a request: its header clock waits
			cl.dialStarted()
			defer cl.dialEnded()
		}
		c, err := dial(ctx, network, addr)
		if p != nil && err != nil {
			p.report(err)
		}
		if err != nil {
			return nil, err
		}
		if p != nil && !p.tls {
			defer p.report(nil) // once it is counted
		}
		tc := &trackedConn{Conn: c, set: s, addr: addr}
		if rc, ok := c.(*resolvedConn); ok {
			tc.Conn, tc.host, tc.dns = rc.Conn, rc.host, rc.entry
		}
		if ta, ok := tc.Conn.RemoteAddr().(*net.TCPAddr); ok {
			tc.ip = ta.AddrPort().Addr().Unmap()
		}
		if h := s.health; h != nil {
			tc.reqStart.Store(-1)
			if sc, ok := tc.Conn.(syscall.Conn); ok {
				tc.raw, _ = sc.SyscallConn()
			}
			tc.peer = h.peerFor(addr)
			now := h.clock.now()
			tc.lastRead.Store(now)
			tc.lastWrite.Store(now)
			if l := int64(h.lifetime); l > 0 {
				tc.expires = now + l - rand.Int64N(l/10+1) // 90–100% of it: no reconnect storm
			}
		}
		s.obs.dialled(tc)
		if !s.add(tc) {
			c.Close()
			return nil, errDialAfterStop
		}
		s.obs.connOpened(tc)
		return tc, nil
	}
}

func (s *connSet) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *connSet) add(c *trackedConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*trackedConn]struct{})
		s.perAddr = make(map[string]int)
	}
	s.conns[c] = struct{}{}
	s.perAddr[c.addr]++
	s.stats.opened.Add(1)
	s.stats.open.Add(1)
	return true
}

func (s *connSet) remove(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.stats.open.Add(-1)
	s.perAddr[c.addr]--
	last := s.perAddr[c.addr] == 0
	if last {
		delete(s.perAddr, c.addr)
	}
	s.mu.Unlock()
	s.obs.connClosed(c)
	if last && s.onLast != nil {
		s.onLast(c.addr)
	}
}

// count returns how many connections to addr are open.
func (s *connSet) count(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perAddr[addr]
}

// markGone marks the connections to host whose address is not in keep, so that they are
// retired when a request next takes them.
func (s *connSet) markGone(host string, keep []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.host == host && c.ip.IsValid() && !slices.Contains(keep, c.ip) {
			c.gone.Store(true)
		}
	}
}

// closeAll closes the set to new dials and closes every connection still open, returning how
// many it closed.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	s.closed = true
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeFor(reasonStop)
	}
	return len(conns)
}

// trackedConn is a connection of the owned transport; closing it removes it from its set.
//
// With health on, it notes with one monotonic clock read per Read or Write when it last read
// and wrote, and health arms it when a request takes it from the idle pool (an HTTP/1.1
// connection, before the request writes a byte): the armed write, and only that one, checks
// whether the server has closed the connection meanwhile, and marks where the request begins,
// so that a close before the server acknowledged any of it proves the request unsent. Every
// other write, of a request, a body or an upgraded stream, passes straight through.
type trackedConn struct {
	net.Conn
	set     *connSet
	addr    string          // as dialled
	host    string          // the name the DNS cache resolved; empty if none
	dns     *dnsEntry       // the name's cache entry; nil if none
	ip      netip.Addr      // the address it is connected to
	peer    *peer           // what is known of addr; nil without health
	expires int64           // on health's clock, when it is past MaxConnLifetime; zero: never
	raw     syscall.RawConn // the socket, for the peek and TCP_INFO; nil if none

	lastRead   atomic.Int64 // on health's clock: the last Read that returned data
	lastWrite  atomic.Int64 // the last Write
	unanswered atomic.Int64 // the first Write since the last Read that returned data
	written    atomic.Int64 // bytes written
	proto      atomic.Int32 // protoUnknown, protoH1 or protoH2, from the first request that took it
	gone       atomic.Bool  // DNS no longer returns ip
	closed     atomic.Bool

	// Set by health when a request takes the connection from the idle pool, consumed by that
	// request's first write; then read by the goroutines of that request only.
	armed    atomic.Bool
	idleFor  atomic.Int64 // how long it had been idle when it was taken
	reqStart atomic.Int64 // written when the armed request began; -1: none in flight
	reqAt    atomic.Int64 // when, on health's clock

	peekFn     func(uintptr) // peekFD, made once; used by the armed write only
	peekClosed bool          // peekFD's answer

	reason string  // why it closed: set once, by whoever closes it first (closeFor)
	obs    connObs // its observed state; zero unless observed
}

// What a connection speaks, once a request has taken it.
const (
	protoUnknown = iota
	protoH1
	protoH2
)

// Read notes when data arrives. A close or reset of an idle HTTP/1.1 connection, which
// net/http's read loop sees at once, teaches its address the server's idle bound. A close
// (EOF) that ends the armed request's wait for its response before the server's TCP
// acknowledged any byte of it proves the request unsent.
func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	h := c.set.health
	if h == nil {
		return n, err
	}
	now := h.clock.now()
	if n > 0 {
		c.lastRead.Store(now)
		return n, err
	}
	if err != nil && !c.closed.Load() && c.proto.Load() == protoH1 && c.lastRead.Load() >= c.lastWrite.Load() &&
		(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		// The server closed a connection whose last exchange was its response: idle in the
		// pool, where net/http's read loop waits on it. How long it had been idle is the
		// server's idle bound, learned before any request meets the next such close. (A
		// response delimited by the close that pauses before it teaches a bound too short:
		// it costs reconnections until observedFor passes, never a request.)
		c.learn(time.Duration(now - c.lastRead.Load()))
		return n, err
	}
	if errors.Is(err, io.EOF) && !c.closed.Load() && c.proto.Load() == protoH1 {
		if start := c.reqStart.Load(); start >= 0 && c.lastRead.Load() < c.reqAt.Load() && c.written.Load() > start {
			// Only an orderly close: its segment acknowledges what the server's TCP had
			// received, while Linux ignores the acknowledgement field of a reset.
			if acked, ok := c.ackedBytes(); ok && acked-1 <= start { // bytes_acked counts the SYN
				// The server closed before the request arrived, and never read it; it had
				// been idle for idleFor when it was taken: the server's idle bound.
				c.learn(time.Duration(c.idleFor.Load()))
				return n, &unsentError{err: err}
			}
		}
	}
	return n, err
}

// unsentError is the error of a read that found the connection closed by its server before
// the server's TCP had acknowledged any byte of the request written to it: the request never
// reached the server, and the tracker sends it again (see neverSent).
type unsentError struct{ err error }

func (e *unsentError) Error() string { return e.err.Error() }
func (e *unsentError) Unwrap() error { return e.err }

// Write writes p. The armed write, the first of a request that took the connection from the
// idle pool, first checks that the server has not closed the connection meanwhile, as late as
// can be; if it has, it writes nothing and retires the connection, so that the request
// provably never reached the server and net/http sends it on another connection.
func (c *trackedConn) Write(p []byte) (int, error) {
	if h := c.set.health; h != nil {
		now := h.clock.now()
		if c.armed.CompareAndSwap(true, false) {
			if idle := time.Duration(c.idleFor.Load()); idle >= peekAfter && c.closedByPeer() {
				c.learn(idle)
				c.retire(RetiredServerClosed)
				h.stats.replayed.Add(1) // only requests that can be sent again are armed
				return 0, errRetired
			}
			c.reqStart.Store(c.written.Load())
			c.reqAt.Store(now)
		}
		if c.lastRead.Load() >= c.lastWrite.Load() {
			c.unanswered.Store(now) // the first write since the peer last sent anything
		}
		c.lastWrite.Store(now)
	}
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// ReadFrom keeps the underlying connection's io.ReaderFrom (sendfile, splice) for request
// bodies copied from files.
func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	if h := c.set.health; h != nil {
		c.lastWrite.Store(h.clock.now())
	}
	var n int64
	var err error
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(writerOnly{c.Conn}, r)
	}
	c.written.Add(n)
	return n, err
}

// writerOnly hides every method of a writer but Write, so that io.Copy does not call back
// into ReadFrom.
type writerOnly struct{ io.Writer }

// Close closes the connection for net/http, the peer or a caller: the reason "closed", or
// "dead" for an HTTP/2 connection closed after a write went unanswered for HTTP2PingTimeout
// (tls.Conn's Close writes an alert first, so what counts is the first write since the peer
// last sent data).
func (c *trackedConn) Close() error { return c.closeFor(reasonClosed) }

// closeFor closes the connection and, if it is the first to, records reason as why.
func (c *trackedConn) closeFor(reason string) error {
	if c.closed.CompareAndSwap(false, true) {
		if h := c.set.health; h != nil && reason == reasonClosed && h.deadAt > 0 && c.proto.Load() == protoH2 {
			lr, fu := c.lastRead.Load(), c.unanswered.Load()
			if fu > lr && h.clock.now()-fu >= int64(h.deadAt) {
				reason = RetiredDead
				c.set.stats.retired(RetiredDead)
			}
		}
		c.reason = reason
		c.set.remove(c)
	}
	return c.Conn.Close()
}

// retire closes the connection for reason, one of the Retired constants, before a request
// writes to it.
func (c *trackedConn) retire(reason string) {
	c.set.stats.retired(reason)
	c.closeFor(reason)
}

// learn teaches the connection's address that its server closed a connection that had been
// idle in the pool for d.
func (c *trackedConn) learn(d time.Duration) {
	if c.peer != nil {
		c.peer.learnObserved(d, c.set.health.clock.now())
	}
}
