package httpfx

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// errDialAfterStop is the error of a dial the owned transport attempts after stop.
var errDialAfterStop = fmt.Errorf("%w: no new connection after stop", ErrClosed)

// dialFunc is the type of http.Transport.DialContext.
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// connSet holds the open connections of the owned transport, so that stop can close the ones
// still in use, which http.Transport cannot. It changes only when a connection is dialled or
// closed, never per request. It is safe for concurrent use.
type connSet struct {
	stats  *Stats
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
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, set: s, addr: addr}
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
type trackedConn struct {
	net.Conn
	set    *connSet
	addr   string // as dialled
	closed atomic.Bool
	reason string  // why it closed: set once, by whoever closes it first (closeFor)
	obs    connObs // its observed state; zero unless observed
}

// ReadFrom keeps the underlying connection's io.ReaderFrom (sendfile, splice) for request
// bodies copied from files.
func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

// writerOnly hides every method of a writer but Write, so that io.Copy does not call back
// into ReadFrom.
type writerOnly struct{ io.Writer }

// Close closes the connection for net/http, the peer or a caller: the reason "closed".
func (c *trackedConn) Close() error { return c.closeFor(reasonClosed) }

// closeFor closes the connection and, if it is the first to, records reason as why.
func (c *trackedConn) closeFor(reason string) error {
	if c.closed.CompareAndSwap(false, true) {
		c.reason = reason
		c.set.remove(c)
	}
	return c.Conn.Close()
}
