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

// trackedConn is a connection of the owned transport; closing it removes it from its set. It
// notes, with one monotonic clock read per Read or Write, when it last read and wrote, so that
// health can tell an idle connection that its server closed from one in use.
type trackedConn struct {
	net.Conn
	set     *connSet
	addr    string     // as dialled
	host    string     // the name the DNS cache resolved; empty if none
	dns     *dnsEntry  // the name's cache entry; nil if none
	ip      netip.Addr // the address it is connected to
	peer    *peer      // what is known of addr; nil without health
	expires int64      // on health's clock, when it is past MaxConnLifetime; zero: never

	lastRead   atomic.Int64 // on health's clock: the last Read that returned data
	lastWrite  atomic.Int64 // the last Write
	unasked    atomic.Int64 // how long the connection was idle before the last Read's data arrived, if it was
	unanswered atomic.Int64 // the first Write since the last Read that returned data
	written    atomic.Int64 // bytes written
	reqStart   atomic.Int64 // written when the request in flight began (HTTP/1.1)
	peerClosed atomic.Bool  // a Read returned the peer's EOF or reset
	h1         atomic.Bool  // a request took it and it speaks HTTP/1.1 (not HTTP/2)
	gone       atomic.Bool  // DNS no longer returns ip
	closed     atomic.Bool
	reason     string  // why it closed: set once, by whoever closes it first (closeFor)
	obs        connObs // its observed state; zero unless observed
}

// Read notes when data arrives, and the server's close of an idle connection, which teaches
// its address's idle bound.
func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	h := c.set.health
	if h == nil {
		return n, err
	}
	now := h.clock.now()
	lr := c.lastRead.Load()
	idle := lr >= c.lastWrite.Load() // nothing written since the last data: no request waits
	if n > 0 {
		if idle {
			c.unasked.Store(now - lr)
		} else {
			c.unasked.Store(0)
		}
		c.lastRead.Store(now)
	}
	if err != nil && !c.closed.Load() && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		c.peerClosed.Store(true)
		if idle && n == 0 {
			c.learn(time.Duration(now - lr))
		}
		if !idle && n == 0 && c.h1.Load() {
			if start, w := c.reqStart.Load(), c.written.Load(); w > start {
				if acked, ok := c.ackedBytes(); ok && acked-1 <= start { // bytes_acked counts the SYN
					// The peer's TCP acknowledged no byte of the request in flight: its
					// server closed before the request arrived, and never read it.
					return n, &unsentError{err: err}
				}
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

// Write refuses, without writing, on a connection whose server has closed it or that httpfx
// retired: net/http then sends the request on another connection, as nothing was written.
func (c *trackedConn) Write(p []byte) (int, error) {
	if c.peerClosed.Load() || c.closed.Load() {
		return 0, errRetired
	}
	if h := c.set.health; h != nil {
		now := h.clock.now()
		lr := c.lastRead.Load()
		if c.h1.Load() && lr >= c.lastWrite.Load() && now-lr >= int64(peekAfter) && c.closedByPeer() {
			// The first write of a request on an idle HTTP/1.1 connection, and the server has
			// closed it: refuse before writing anything, as late as can be, so that the request
			// provably never reached the server and goes on another connection.
			c.retire(RetiredServerClosed)
			return 0, errRetired
		}
		if lr >= c.lastWrite.Load() {
			c.unanswered.Store(now) // the first write since the peer last sent anything
			c.reqStart.Store(c.written.Load())
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
// "dead" after a write went unanswered for HTTP2PingTimeout (tls.Conn's Close writes an
// alert first, so what counts is the first write since the peer last sent data). A close by
// net/http right after unasked data is a TLS server closing an idle connection (its
// close_notify alert), and teaches the idle bound.
func (c *trackedConn) Close() error { return c.closeFor(reasonClosed) }

// closeFor closes the connection and, if it is the first to, records reason as why.
func (c *trackedConn) closeFor(reason string) error {
	if c.closed.CompareAndSwap(false, true) {
		if h := c.set.health; h != nil && reason == reasonClosed {
			now := h.clock.now()
			lr, fu := c.lastRead.Load(), c.unanswered.Load()
			switch {
			case h.deadAt > 0 && fu > lr && now-fu >= int64(h.deadAt):
				reason = RetiredDead
				c.set.stats.retired(RetiredDead)
			case now-lr < int64(closeSoon):
				c.learn(time.Duration(c.unasked.Load()))
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

// learn teaches the connection's address that its server closed a connection idle for d.
func (c *trackedConn) learn(d time.Duration) {
	if c.peer != nil {
		c.peer.learnObserved(d)
	}
}
