package httpfx

import (
	"errors"
	"io"
	"math/rand/v2"
	"net/http/httptrace"
	"sync/atomic"
	"syscall"
	"time"
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
//
// What the server's closes teach goes to the address's peer (health.go): a close (EOF) of an
// idle plain connection, which net/http's read loop sees at once; over TLS, the close_notify
// alert that tls.Conn reads and reports as EOF without reading the socket's EOF, seen as data
// that arrived unasked on an idle connection right before net/http closed it; a close found by
// the armed write's peek; and a close that proves a request unsent. A connection found open by
// the peek after an idle spell teaches the contrary.
type connHealth struct {
	h       *health
	peer    *peer           // what is known of the dialled address; nil past maxPeers
	expires int64           // on health's clock, when it is past MaxConnLifetime; zero: never
	raw     syscall.RawConn // the socket, for the peek and TCP_INFO; nil if none

	lastRead   atomic.Int64 // on health's clock: the last Read that returned data
	lastWrite  atomic.Int64 // the last Write
	unanswered atomic.Int64 // the first Write since the last Read that returned data
	unasked    atomic.Int64 // the idle time before data that arrived with no write since the read before; zero: none
	written    atomic.Int64 // bytes written
	proto      atomic.Int32 // protoUnknown, protoH1 or protoH2, from the first request that took it
	tls        atomic.Bool  // it carries TLS, from the first request that took it

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

// taken is told that a request took the connection, which speaks proto (protoUnknown: as it did
// for the requests before) over TLS or not, and
// returns why it must be retired before the request writes to it, or "". rewindable says
// whether net/http can send the request again on another connection: only then is the
// connection retired or armed. A connection taken from the idle pool (reused, or dialled for
// another request and pooled) that speaks HTTP/1.1 (an HTTP/2 one may carry other streams) is
// retired if DNS dropped its address (gone), past its lifetime, or
// idle for nearly its server's idle bound (but for a probe of the bound): nothing of the
// request has been written, so net/http sends it on another connection. Otherwise it is armed.
func (ch *connHealth) taken(info httptrace.GotConnInfo, proto int32, tls, gone, rewindable bool) string {
	if proto != protoUnknown && ch.proto.Load() == protoUnknown {
		ch.tls.Store(tls)
		ch.proto.Store(proto)
	}
	if ch.proto.Load() != protoH1 {
		return "" // it may carry other streams
	}
	ch.reqStart.Store(-1) // the request before is over
	if !info.Reused && !info.WasIdle || !rewindable {
		return "" // dialled for this request, or a request net/http cannot send again
	}
	now := ch.h.clock.now()
	switch {
	case gone:
		return RetiredAddressGone
	case ch.expires != 0 && now >= ch.expires:
		return RetiredLifetime
	case info.WasIdle && ch.peer != nil:
		if after := ch.peer.retireAfter(now); after > 0 && info.IdleTime >= after && !ch.peer.probe(info.IdleTime, now) {
			return RetiredIdle
		}
	}
	ch.idleFor.Store(int64(info.IdleTime)) // zero if handed over straight from another request
	ch.armed.Store(true)
	return ""
}

// read notes a Read that returned data and err, and returns how much of it and the error to
// report: an *unsentError for a close that proves the armed request unsent. closed reports
// whether httpfx or net/http closed the connection already.
func (ch *connHealth) read(data []byte, err error, closed bool) (int, error) {
	now := ch.h.clock.now()
	n := len(data)
	if n > 0 {
		prev := ch.lastRead.Swap(now)
		if ch.proto.Load() != protoH1 || closed {
			return n, err
		}
		if ch.tls.Load() && ch.idleFor.Load() >= int64(peekAfter) && closeNotify(data) && ch.provesUnsent(prev) {
			// Data before any of the response, which the server's TCP did not have the
			// request to answer: its close_notify. The connection is done for.
			return 0, &unsentError{err: io.EOF}
		}
		if ch.lastWrite.Load() <= prev && now-prev >= int64(learnMin) {
			ch.unasked.Store(now - prev) // over TLS, a close_notify, if net/http closes now
		} else {
			ch.unasked.Store(0)
		}
		return n, err
	}
	if err == nil || closed || ch.proto.Load() != protoH1 {
		return n, err
	}
	if ch.lastRead.Load() >= ch.lastWrite.Load() && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		// The server closed a connection whose last exchange was its response: idle in the
		// pool, where net/http's read loop waits on it. How long it had been idle is what
		// its idle timer, if it has one, allows.
		ch.serverClosed(time.Duration(now - ch.lastRead.Load()))
		return n, err
	}
	// Only an orderly close: its segment acknowledges what the server's TCP had received,
	// while Linux ignores the acknowledgement field of a reset.
	if errors.Is(err, io.EOF) && ch.provesUnsent(ch.lastRead.Load()) {
		return n, &unsentError{err: err}
	}
	if ch.peer != nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		idle := time.Duration(0) // of a connection the request did not take from the pool
		if ch.reqStart.Load() >= 0 {
			idle = time.Duration(ch.idleFor.Load())
		}
		ch.peer.busy(idle, now) // closed under a request
	}
	return n, err
}

// closeNotify reports whether b is one whole TLS record that can only be the server's
// close_notify: an alert record (up to TLS 1.2, alerts travel under their own type), or an
// application-data record of 19 bytes (TLS 1.3, whose records all look like application data:
// a 2-byte alert, its type and a 16-byte AEAD tag, unpadded). Anything else a server may send
// unasked on an idle connection (a session ticket, a key update) proves nothing, as the server
// keeps the connection and may yet read the request. A close_notify does: the server decided
// to close before it sent it, and the segment carrying it acknowledges all the server's TCP
// had received by then.
func closeNotify(b []byte) bool {
	const header, tls13Alert = 5, 2 + 1 + 16
	if len(b) < header || int(b[3])<<8|int(b[4]) != len(b)-header {
		return false
	}
	switch b[0] {
	case 21: // alert
		return true
	case 23: // application data
		return len(b)-header == tls13Alert
	}
	return false
}

// provesUnsent reports whether the armed request, which has read nothing of its response
// since it began (lastRead is before it), was never received by the server: its TCP has
// acknowledged none of the request's bytes (TCP_INFO; Linux only). The connection had been
// idle before the request, for idleFor: that is what the server's idle timer allowed, and
// the peer learns it. Over TLS it is asked for the first data after the request, which costs a
// system call, only when the connection had been idle for peekAfter: a server's idle timer
// cannot have closed one reused sooner.
func (ch *connHealth) provesUnsent(lastRead int64) bool {
	start := ch.reqStart.Load()
	if start < 0 || lastRead >= ch.reqAt.Load() {
		return false
	}
	acked, ok := ch.ackedBytes()
	if !ok || acked-1 > start { // bytes_acked counts the SYN
		return false
	}
	ch.serverClosed(time.Duration(ch.idleFor.Load()))
	return true
}

// beforeWrite is called before every write and reports whether the connection must be
// retired instead: the armed write, the first of a request that took the connection from the
// idle pool, finds that the server closed it meanwhile.
func (ch *connHealth) beforeWrite() bool {
	now := ch.h.clock.now()
	if ch.armed.CompareAndSwap(true, false) {
		if idle := time.Duration(ch.idleFor.Load()); idle >= peekAfter {
			if ch.closedByPeer() {
				ch.serverClosed(idle)
				return true
			}
			if ch.peer != nil {
				ch.peer.open(idle, now)
			}
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

// closing is told that net/http closes the connection, and returns whether it is dead: an
// HTTP/2 connection whose peer stopped answering, a write unanswered for nearly
// HTTP2PingTimeout (tls.Conn's Close writes an alert first, so what counts is the first write
// since the peer last sent data). An idle HTTP/1.1 connection over TLS closed right after data
// came unasked was closed by its server (close_notify), which the peer learns.
func (ch *connHealth) closing() bool {
	now := ch.h.clock.now()
	switch ch.proto.Load() {
	case protoH2:
		lr, fu := ch.lastRead.Load(), ch.unanswered.Load()
		return ch.h.deadAt > 0 && fu > lr && now-fu >= int64(ch.h.deadAt)
	case protoH1:
		if idle := ch.unasked.Load(); idle > 0 && ch.tls.Load() && now-ch.lastRead.Load() < int64(learnMin) {
			ch.serverClosed(time.Duration(idle))
		}
	}
	return false
}

// serverClosed tells the address's peer that its server closed a connection that had been
// idle in the pool for d.
func (ch *connHealth) serverClosed(d time.Duration) {
	if ch.peer != nil {
		ch.peer.closed(d, ch.h.clock.now())
	}
}
