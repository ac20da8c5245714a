package httpfx

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http/httptrace"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/httpfx/httpfx/internal/dnscache"
)

// dialFunc is the type of http.Transport.DialContext.
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// Reasons a connection closed, besides the Retired ones; see ConnEvent.Reason.
const (
	reasonClosed = "closed"
	reasonStop   = "stop"
)

// connSet holds the open connections of the owned transport, so that stop can close the ones
// still in use, which http.Transport cannot, and so that health can retire them. It changes
// only when a connection is dialled or closed, never per request, and it tells the
// observers. It is safe for concurrent use.
type connSet struct {
	stats  *Stats
	health *health         // nil: connections are only counted
	dns    *dnscache.Cache // the resolver of the dials; nil if the transport dials otherwise
	h2c    bool            // the transport speaks HTTP/2 without TLS (and not HTTP/1.1 there)
	onLast func(string)    // called, outside the lock, when the last connection to an address closes
	obs    []Observer      // told of each connection's changes; nil: none
	stop   context.Context // ends the dials in flight at stop
	cancel context.CancelFunc

	// The httptrace hooks (gotConn) of the requests of httpfx's clients: for a request that
	// net/http can send again, and for one it cannot.
	traceRewindable, traceOnce httptrace.ClientTrace

	mu      sync.Mutex
	conns   map[*conn]struct{}
	perAddr map[string]int // open connections by dialled address
	closed  bool           // no more dials: stop has closed the set

	// events is held for reading while an event is told to the observers, and for writing by
	// stop once it has closed the set, so that no event reaches an observer after stop.
	events sync.RWMutex
	silent bool // stop has returned: events are no longer told; guarded by events
}

// conn is a connection of the owned transport; closing it removes it from its set. It is
// announced to the observers (ConnOpened) once it can carry HTTP: when a request first takes
// it, or when a pre-warmed one's handshake is done; one whose TLS handshake fails never is.
type conn struct {
	net.Conn
	set  *connSet
	addr string         // as dialled
	dns  *dnscache.Conn // the cached name's connection, for refreshes; nil if none
	ip   netip.Addr     // the address it is connected to
	h    *connHealth    // nil without health

	gone      atomic.Bool // DNS no longer returns ip
	closed    atomic.Bool
	announced atomic.Bool // ConnOpened was told, and ConnClosed will be
	reason    string      // why it closed: set once, by whoever closes it first (closeFor)
	opened    time.Time   // when it was dialled, for the observers
	peer      string      // the remote address, for the observers
	state     atomic.Int32
}

// The state word of an observed connection: the requests it carries, and connGone once it is
// closed, so that every change is one atomic step and its events always add up.
const connGone = 1 << 30

// dialHook is what a dial reports to the code that asked for it (prewarm.go), found in the
// dial's context under dialHookKey.
type dialHook struct {
	began func()      // the dial begins
	ended func(error) // the dial (with tls, the handshake) ended
	conn  func(*conn) // the connection dialled, before ended; nil: not wanted
	tls   bool        // the TLS handshake's outcome is the one that counts: ended is told elsewhere
}

type dialHookKey struct{}

func newConnSet(stats *Stats) *connSet {
	s := &connSet{stats: stats}
	s.stop, s.cancel = context.WithCancel(context.Background())
	s.traceRewindable.GotConn = func(info httptrace.GotConnInfo) { s.gotConn(info, true) }
	s.traceOnce.GotConn = func(info httptrace.GotConnInfo) { s.gotConn(info, false) }
	return s
}

// wrap returns a dial function that counts and records every connection dial opens, refuses
// to dial once the set is closed, and ends the dials in flight when stop closes it.
func (s *connSet) wrap(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if s.isClosed() {
			return nil, errDialAfterStop
		}
		hook, _ := ctx.Value(dialHookKey{}).(*dialHook)
		if hook != nil {
			hook.began()
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(s.stop, cancel)()
		nc, err := dial(ctx, network, addr)
		if err != nil {
			if hook != nil {
				hook.ended(err)
			}
			if s.stop.Err() != nil {
				return nil, errDialAfterStop
			}
			return nil, err
		}
		c := &conn{Conn: nc, set: s, addr: addr}
		if dc, ok := nc.(*dnscache.Conn); ok {
			c.Conn, c.dns = dc.Conn, dc
		}
		if ta, ok := c.Conn.RemoteAddr().(*net.TCPAddr); ok {
			c.ip = ta.AddrPort().Addr().Unmap()
		}
		if s.health != nil {
			c.h = s.health.newConnHealth(addr, c.Conn)
		}
		if s.obs != nil {
			c.opened, c.peer = time.Now(), c.Conn.RemoteAddr().String()
		}
		if !s.add(c) {
			nc.Close()
			return nil, errDialAfterStop
		}
		if hook != nil && hook.conn != nil {
			hook.conn(c)
		}
		if hook != nil && !hook.tls {
			s.announce(c, nil)
			hook.ended(nil)
		}
		return c, nil
	}
}

func (s *connSet) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *connSet) add(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
		s.perAddr = make(map[string]int)
	}
	s.conns[c] = struct{}{}
	s.perAddr[c.addr]++
	s.stats.opened.Add(1)
	s.stats.open.Add(1)
	return true
}

func (s *connSet) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.stats.open.Add(-1)
	s.perAddr[c.addr]--
	last := s.perAddr[c.addr] == 0
	if last {
		delete(s.perAddr, c.addr)
	}
	s.mu.Unlock()
	if s.obs != nil && c.announced.Load() {
		v := c.state.Or(connGone)
		if v > 0 {
			s.stats.states.inUse.Add(-1)
		}
		s.tell(ConnEvent{Kind: ConnClosed, Addr: c.addr, Peer: c.peer, Reason: c.reason,
			Age: time.Since(c.opened), WasActive: v > 0})
	}
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

// markGone marks the connections to host whose address is not in keep as gone, so that they
// are retired when a request next takes them, and clears the mark of those whose address is
// back.
func (s *connSet) markGone(host string, keep []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.dns != nil && c.dns.Host == host && c.ip.IsValid() {
			c.gone.Store(!slices.Contains(keep, c.ip))
		}
	}
}

// closeAll closes the set to new dials, ends the dials in flight, closes every connection
// still open and returns how many it closed.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	for _, c := range conns {
		c.closeFor(reasonStop)
	}
	return len(conns)
}

// longestIdle returns the longest idle time at now, on health's clock, of the open HTTP/1.1
// connections to addr that carry no request: the server's idle timer, if it has one, is longer.
func (s *connSet) longestIdle(addr string, now int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var longest int64
	for c := range s.conns {
		if c.addr != addr || c.h == nil || c.h.proto.Load() != protoH1 || c.closed.Load() {
			continue
		}
		if lr := c.h.lastRead.Load(); lr >= c.h.lastWrite.Load() {
			longest = max(longest, now-lr)
		}
	}
	return longest
}

// quiet waits until the events being told are told, and tells no more.
func (s *connSet) quiet() {
	s.events.Lock()
	s.silent = true
	s.events.Unlock()
}

// gotConn is the httptrace hook of the requests of httpfx's clients: it runs on the
// request's goroutine when the request has its connection, before it writes. It announces a
// connection that no request took before, asks for a DNS refresh of the connection's name if
// one is due, and retires the connection if health says so: nothing of the request has been
// written, so net/http sends it on another connection (health retires a connection only for
// a request that net/http can send again: rewindable).
func (s *connSet) gotConn(info httptrace.GotConnInfo, rewindable bool) {
	c := s.connOf(info.Conn)
	if c == nil {
		return
	}
	tc, isTLS := info.Conn.(*tls.Conn)
	var cs *tls.ConnectionState // read once per connection
	if !c.announced.Load() {
		if isTLS {
			state := tc.ConnectionState()
			cs = &state
		}
		s.announce(c, cs)
	}
	if c.h == nil {
		return
	}
	if (info.Reused || info.WasIdle) && c.dns != nil {
		s.dns.Due(c.dns)
	}
	proto := int32(protoUnknown) // known already but for the first request
	if c.h.proto.Load() == protoUnknown {
		proto = protoH1
		if isTLS && cs == nil {
			state := tc.ConnectionState()
			cs = &state
		}
		if isTLS && cs.NegotiatedProtocol == "h2" || !isTLS && s.h2c {
			proto = protoH2
		}
	}
	if reason := c.h.taken(info, proto, isTLS, c.gone.Load(), rewindable); reason != "" {
		c.retire(reason)
		s.stats.replayed.Add(1)
	}
}

// announce tells the observers that c can carry HTTP, once, with what its TLS handshake, if
// any, negotiated (cs), and counts the handshake.
func (s *connSet) announce(c *conn, cs *tls.ConnectionState) {
	if !c.announced.CompareAndSwap(false, true) {
		return
	}
	ev := ConnEvent{Kind: ConnOpened, Addr: c.addr, Peer: c.peer}
	if cs != nil {
		ev.TLS, ev.TLSResumed = true, cs.DidResume
		s.stats.handshake(cs.DidResume)
	}
	if s.obs != nil && c.state.Load()&connGone == 0 {
		s.tell(ev)
	}
}

// connOf returns the connection of the set under nc, a connection net/http reports, or nil.
func (s *connSet) connOf(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if c, ok := nc.(*conn); ok && c.set == s {
		return c
	}
	return nil
}

// event tells the observers that c changed to kind k.
func (s *connSet) event(c *conn, k ConnEventKind) {
	if s.obs != nil {
		s.tell(ConnEvent{Kind: k, Addr: c.addr, Peer: c.peer})
	}
}

func (s *connSet) tell(ev ConnEvent) {
	s.events.RLock()
	defer s.events.RUnlock()
	if s.silent {
		return
	}
	for _, x := range s.obs {
		x.ConnChanged(ev)
	}
}

// acquire counts one more request on c, reporting false if c is closed.
func (s *connSet) acquire(c *conn) bool {
	for {
		v := c.state.Load()
		if v&connGone != 0 {
			return false
		}
		if c.state.CompareAndSwap(v, v+1) {
			if v == 0 {
				s.stats.states.inUse.Add(1)
				s.event(c, ConnActive)
			}
			return true
		}
	}
}

// release counts one request less on c.
func (s *connSet) release(c *conn) {
	if c.state.Add(-1) == 0 {
		s.stats.states.inUse.Add(-1)
		s.event(c, ConnIdle)
	}
}

// Read reads, and lets health note it.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.h != nil {
		n, err = c.h.read(p[:n], err, c.closed.Load())
	}
	return n, err
}

// Write writes p, unless health retires the connection first: then nothing is written, and
// net/http sends the request on another connection.
func (c *conn) Write(p []byte) (int, error) {
	if c.h != nil && c.h.beforeWrite() {
		c.retire(RetiredServerClosed)
		c.set.stats.replayed.Add(1) // only requests that can be sent again are armed
		return 0, errRetired
	}
	n, err := c.Conn.Write(p)
	if c.h != nil {
		c.h.wrote(int64(n))
	}
	return n, err
}

// ReadFrom keeps the underlying connection's io.ReaderFrom (sendfile, splice) for request
// bodies copied from files.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if c.h != nil && c.h.beforeWrite() {
		c.retire(RetiredServerClosed)
		c.set.stats.replayed.Add(1)
		return 0, errRetired
	}
	var n int64
	var err error
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(writerOnly{c.Conn}, r)
	}
	if c.h != nil {
		c.h.wrote(n)
	}
	return n, err
}

// writerOnly hides every method of a writer but Write, so that io.Copy does not call back
// into ReadFrom.
type writerOnly struct{ io.Writer }

// Close closes the connection for net/http, the peer or a caller: the reason "closed", or
// "dead" for an HTTP/2 connection whose peer stopped answering.
func (c *conn) Close() error { return c.closeFor(reasonClosed) }

// closeFor closes the connection and, if it is the first to, records reason as why.
func (c *conn) closeFor(reason string) error {
	if c.closed.CompareAndSwap(false, true) {
		if reason == reasonClosed && c.h != nil && c.h.closing() {
			reason = RetiredDead
			c.set.stats.retired(RetiredDead)
		}
		c.reason = reason
		c.set.remove(c)
	}
	return c.Conn.Close()
}

// retire closes the connection for reason, one of the Retired constants, before a request
// writes to it.
func (c *conn) retire(reason string) {
	c.set.stats.retired(reason)
	c.closeFor(reason)
}
