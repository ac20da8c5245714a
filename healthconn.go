package httpfx

import (
	"errors"
	"io"
	"math/rand/v2"
	"net/http/httptrace"
	"syscall"
	"time"

	"sync/atomic"
)

// errRetired is the error of a write to a connection httpfx retired or found closed by the
// server: nothing was written, so net/http sends the request on another connection if it can.
var errRetired = errors.New("httpfx: connection retired before the request was written")

// What a connection speaks, once a request has taken it.
const (
	protoUnknown = iota
	protoH1
	protoH2
)

// connHealth is the health state of one connection of the owned transport: it notes, with one
// monotonic clock read per Read or Write, when the connection last read and wrote, and decides
// when it must be retired. When a request takes an HTTP/1.1 connection from the idle pool
// (taken), the connection is armed: the request's first write checks, as late as can be,
// that the server has not closed it meanwhile, and marks where the request begins, so that a
// close before the server acknowledged any byte of it proves the request unsent. Every other
// write passes straight through. The connection (conns.go) acts on what it decides.
type connHealth struct {
	h       *health
	peer    *peer           // what is known of the dialled address; nil past maxPeers
	expires int64           // on health's clock, when it is past MaxConnLifetime; zero: never
	raw     syscall.RawConn // the socket, for the peek and TCP_INFO; nil if none

	lastRead   atomic.Int64 // on health's clock: the last Read that returned data
	lastWrite  atomic.Int64 // the last Write
	unanswered atomic.Int64 // the first Write since the last Read that returned data
	written    atomic.Int64 // bytes written
	proto      atomic.Int32 // protoUnknown, protoH1 or protoH2, from the first request that took it

	// Set by taken when a request takes the connection from the idle pool, consumed by that
	// request's first write; then read by the goroutines of that request only.
	armed    atomic.Bool
	idleFor  atomic.Int64 // how long it had been idle when it was taken
	reqStart atomic.Int64 // written when the armed request began; -1: none in flight
	reqAt    atomic.Int64 // when, on health's clock

	peekFn     func(uintptr) // peekFD, made once; used by the armed write only
	peekClosed bool          // peekFD's answer
}

// unsentError is the error of a read that found the connection closed by its server before
// the server's TCP had acknowledged any byte of the request written to it: the request never
// reached the server, and the client sends it again.
type unsentError struct{ err error }

func (e *unsentError) Error() string { return e.err.Error() }
func (e *unsentError) Unwrap() error { return e.err }

// newConnHealth returns the health state of a connection just dialled to addr.
func (h *health) newConnHealth(addr string, c any) *connHealth {
	ch := &connHealth{h: h, peer: h.peerFor(addr)}
	ch.reqStart.Store(-1)
	if sc, ok := c.(syscall.Conn); ok {
		ch.raw, _ = sc.SyscallConn()
	}
	now := h.clock.now()
	ch.lastRead.Store(now)
	ch.lastWrite.Store(now)
	if l := int64(h.lifetime); l > 0 {
		ch.expires = now + l - rand.Int64N(l/10+1) // 90–100% of it: no reconnect storm
	}
	return ch
}

// taken is told that a request took the connection, which speaks proto, and returns why it
// must be retired before the request writes to it, or "". A connection that is reused and
// speaks HTTP/1.1 (an HTTP/2 one may carry other streams) is retired if DNS dropped its
// address (gone), past its lifetime, or idle for nearly its server's idle bound: nothing of
// the request has been written, so net/http sends it on another connection. Otherwise it is
// armed.
func (ch *connHealth) taken(info httptrace.GotConnInfo, proto int32, gone bool) string {
	if ch.proto.Load() == protoUnknown {
		ch.proto.Store(proto)
	}
	if !info.Reused || ch.proto.Load() != protoH1 {
		return ""
	}
	now := ch.h.clock.now()
	switch {
	case gone:
		return RetiredAddressGone
	case ch.expires != 0 && now >= ch.expires:
		return RetiredLifetime
	case info.WasIdle && ch.peer != nil && ch.peer.retireAfter(now) > 0 && info.IdleTime >= ch.peer.retireAfter(now):
		return RetiredIdle
	}
	ch.idleFor.Store(int64(info.IdleTime)) // zero if handed over straight from another request
	ch.armed.Store(true)
	return ""
}

// read notes a Read that returned n and err, and returns the error to report. A close or
// reset of an idle HTTP/1.1 connection, which net/http's read loop sees at once, teaches its
// address the server's idle bound. A close (EOF) that ends the armed request's wait for its
// response before the server's TCP acknowledged any byte of it proves the request unsent.
// closed reports whether httpfx or net/http closed the connection already.
func (ch *connHealth) read(n int, err error, closed bool) error {
	now := ch.h.clock.now()
	if n > 0 {
		ch.lastRead.Store(now)
		return err
	}
	if err == nil || closed || ch.proto.Load() != protoH1 {
		return err
	}
	if ch.lastRead.Load() >= ch.lastWrite.Load() && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		// The server closed a connection whose last exchange was its response: idle in the
		// pool, where net/http's read loop waits on it. How long it had been idle is the
		// server's idle bound, learned before any request meets the next such close.
		ch.learn(time.Duration(now - ch.lastRead.Load()))
		return err
	}
	if errors.Is(err, io.EOF) {
		if start := ch.reqStart.Load(); start >= 0 && ch.lastRead.Load() < ch.reqAt.Load() && ch.written.Load() > start {
			// Only an orderly close: its segment acknowledges what the server's TCP had
			// received, while Linux ignores the acknowledgement field of a reset.
			if acked, ok := ch.ackedBytes(); ok && acked-1 <= start { // bytes_acked counts the SYN
				// The server closed before the request arrived, and never read it; it had
				// been idle for idleFor when it was taken: the server's idle bound.
				ch.learn(time.Duration(ch.idleFor.Load()))
				return &unsentError{err: err}
			}
		}
	}
	return err
}

// beforeWrite is called before every write and reports whether the connection must be
// retired instead: the armed write, the first of a request that took the connection from the
// idle pool, finds that the server closed it meanwhile.
func (ch *connHealth) beforeWrite() bool {
	now := ch.h.clock.now()
	if ch.armed.CompareAndSwap(true, false) {
		if idle := time.Duration(ch.idleFor.Load()); idle >= peekAfter && ch.closedByPeer() {
			ch.learn(idle)
			return true
		}
		ch.reqStart.Store(ch.written.Load())
		ch.reqAt.Store(now)
	}
	if ch.lastRead.Load() >= ch.lastWrite.Load() {
		ch.unanswered.Store(now) // the first write since the peer last sent anything
	}
	ch.lastWrite.Store(now)
	return false
}

// wrote notes n bytes written.
func (ch *connHealth) wrote(n int64) { ch.written.Add(n) }

// dead reports whether net/http is closing an HTTP/2 connection whose peer stopped answering:
// a write unanswered for nearly HTTP2PingTimeout (tls.Conn's Close writes an alert first, so
// what counts is the first write since the peer last sent data).
func (ch *connHealth) dead() bool {
	if ch.h.deadAt <= 0 || ch.proto.Load() != protoH2 {
		return false
	}
	lr, fu := ch.lastRead.Load(), ch.unanswered.Load()
	return fu > lr && ch.h.clock.now()-fu >= int64(ch.h.deadAt)
}

// learn teaches the connection's address that its server closed a connection that had been
// idle in the pool for d.
func (ch *connHealth) learn(d time.Duration) {
	if ch.peer != nil {
		ch.peer.learnObserved(d, ch.h.clock.now())
	}
}
