package httpfx

import (
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

// closedBit marks Stats.gate closed; the bits below it count requests in flight.
const closedBit = 1 << 62

// Stats holds the live counters of the client and transport that httpfx built. The Module
// and New create it; users only read it, with Snapshot, from any goroutine. A nil or zero
// Stats reads as all zeros.
type Stats struct {
	// gate holds closedBit and the in-flight count, so that admission is one atomic add.
	gate     atomic.Int64
	requests atomic.Int64
	rejected atomic.Int64
	failed   atomic.Int64
	opened   atomic.Int64
	open     atomic.Int64
	cut      atomic.Int64

	closeIdleIgnored atomic.Int64
	retries          atomic.Int64
	budgetRefused    atomic.Int64
	handshakesFull   atomic.Int64
	handshakesResume atomic.Int64
	replayed         atomic.Int64
	retiredIdle      atomic.Int64
	retiredLifetime  atomic.Int64
	retiredGone      atomic.Int64
	retiredClosed    atomic.Int64
	retiredDead      atomic.Int64

	mu        sync.Mutex
	upstreams map[string]*upstreamStats // by name; written only while the graph is built

	bounds       func() map[string]time.Duration // reads the learned idle bounds; nil: none
	certNotAfter func() time.Time                // reads the client certificate's expiry; nil: none

	states connStates // connections idle and in use, requests waiting: kept if observed
}

// Snapshot is a copy of the counters at one moment. Counters are read one by one, so under
// load the fields may be a few requests apart from one another; InFlight may also count, for
// an instant, a request that is being refused with ErrClosed.
type Snapshot struct {
	Requests    int64 // requests admitted
	InFlight    int64 // admitted requests not yet finished: from admission (waiting for an upstream's slot or a connection included) until the body is closed, read to EOF or fails, or the context ends
	Failed      int64 // admitted requests that ended with an error (round trip or body read)
	Rejected    int64 // requests refused with ErrClosed at admission because the client was stopped; an admitted request whose retry stop ended is Failed
	ConnsOpened int64 // connections the owned transport dialled
	ConnsOpen   int64 // connections of the owned transport open now
	Cut         int64 // in-flight requests cut because the drain bound expired at stop

	// CloseIdleIgnored counts CloseIdleConnections calls on clients httpfx built, which do
	// not empty the shared pool (see CloseIdleConnections, the function).
	CloseIdleIgnored int64

	// HandshakesFull and HandshakesResumed count the TLS handshakes of the connections
	// httpfx's clients used (counted when a request first takes the connection, or when a
	// pre-warmed one is ready): full ones, and those that resumed a session from the client
	// session cache (Config.TLSSessionCacheSize), which skip the certificate exchange.
	HandshakesFull, HandshakesResumed int64

	// ClientCertNotAfter is when the client certificate presented to servers that ask for one
	// (TLSCertFile) expires: the newest good version of the files (see TLSReloadInterval).
	// Zero if none is configured.
	ClientCertNotAfter time.Time

	// Retries counts the requests sent again after a failure worth a retry (see RetryConfig),
	// each time; BudgetRefused the retries the retry budget of their origin refused.
	Retries, BudgetRefused int64

	// Replayed counts requests sent again because they provably never reached the server:
	// those httpfx stopped before they wrote a byte to the connection they had taken (net/http
	// sends them on another), and those the client sent again after net/http's "server closed
	// idle connection" or a close before the server acknowledged any byte of them.
	Replayed int64

	// ConnsRetired counts the connections closed to keep the pool healthy, by reason: the
	// Retired constants, each present. Nil for a nil Stats.
	ConnsRetired map[string]int64

	// IdleBounds holds, by dialled address ("host:port"), how long its server keeps an idle
	// connection, learned from Keep-Alive headers and from its closes of idle connections;
	// an address without one is absent. Nil if none is known.
	IdleBounds map[string]time.Duration

	// ConnsIdle and ConnsInUse split ConnsOpen into connections waiting in the pool and
	// connections carrying a request (HTTP/2: at least one stream); Waiting counts admitted
	// requests that have no connection yet (dialling, or waiting for one of a connection
	// limit). They are -1 unless an Observer is installed: net/http tells which connection a
	// request got only through an httptrace hook, which costs a context and five
	// allocations per request, so httpfx keeps them only when something observes.
	ConnsIdle, ConnsInUse, Waiting int64

	// Upstreams holds the counters of each upstream client (see Upstream), by name; nil if
	// there is none. They are part of the totals above.
	Upstreams map[string]UpstreamSnapshot
}

// UpstreamSnapshot is a copy of one upstream client's counters. Connections are shared by all
// clients, so they are counted only in Snapshot's totals.
type UpstreamSnapshot struct {
	Requests int64 // requests admitted
	InFlight int64 // admitted requests not yet finished, as Snapshot.InFlight counts them: Waiting included
	Waiting  int64 // of InFlight, requests waiting for a slot of the upstream's MaxConnsPerHost
	Failed   int64 // admitted requests that ended with an error, a give-up while waiting included

	Retries, BudgetRefused int64 // as Snapshot's, for this upstream's requests
}

// Snapshot returns the current counters. It only reads: it is safe for concurrent use and
// changes nothing.
func (s *Stats) Snapshot() Snapshot {
	if s == nil {
		return Snapshot{}
	}
	var bounds map[string]time.Duration
	if s.bounds != nil {
		bounds = s.bounds()
	}
	var notAfter time.Time
	if s.certNotAfter != nil {
		notAfter = s.certNotAfter()
	}
	var ups map[string]UpstreamSnapshot
	s.mu.Lock()
	if len(s.upstreams) > 0 {
		ups = make(map[string]UpstreamSnapshot, len(s.upstreams))
		for name, u := range s.upstreams {
			ups[name] = UpstreamSnapshot{Requests: u.requests.Load(), InFlight: u.inFlight.Load(), Waiting: u.waiting.Load(),
				Failed: u.failed.Load(), Retries: u.retries.Load(), BudgetRefused: u.budgetRefused.Load()}
		}
	}
	s.mu.Unlock()
	snap := Snapshot{
		Upstreams:   ups,
		Requests:    s.requests.Load(),
		InFlight:    s.gate.Load() &^ closedBit,
		Failed:      s.failed.Load(),
		Rejected:    s.rejected.Load(),
		ConnsOpened: s.opened.Load(),
		ConnsOpen:   s.open.Load(),
		Cut:         s.cut.Load(),

		CloseIdleIgnored:  s.closeIdleIgnored.Load(),
		Retries:           s.retries.Load(),
		BudgetRefused:     s.budgetRefused.Load(),
		HandshakesFull:    s.handshakesFull.Load(),
		HandshakesResumed: s.handshakesResume.Load(),
		Replayed:          s.replayed.Load(),
		ConnsRetired: map[string]int64{
			RetiredIdle:         s.retiredIdle.Load(),
			RetiredLifetime:     s.retiredLifetime.Load(),
			RetiredAddressGone:  s.retiredGone.Load(),
			RetiredServerClosed: s.retiredClosed.Load(),
			RetiredDead:         s.retiredDead.Load(),
		},
		IdleBounds:         bounds,
		ClientCertNotAfter: notAfter,
	}
	s.states.fill(&snap)
	return snap
}

// ReuseRatio is the share of requests that did not need a new connection: 1 − ConnsOpened /
// Requests, or 0 before the first request and never below 0. Near 1 means connections are
// reused; near 0 means nearly every request paid for a new connection.
func (s Snapshot) ReuseRatio() float64 {
	if s.Requests == 0 || s.ConnsOpened >= s.Requests {
		return 0
	}
	return 1 - float64(s.ConnsOpened)/float64(s.Requests)
}

// handshake counts a TLS handshake of a connection httpfx's clients used.
func (s *Stats) handshake(resumed bool) {
	if resumed {
		s.handshakesResume.Add(1)
	} else {
		s.handshakesFull.Add(1)
	}
}

// retired counts a connection retired for reason, one of the Retired constants.
func (s *Stats) retired(reason string) {
	switch reason {
	case RetiredIdle:
		s.retiredIdle.Add(1)
	case RetiredLifetime:
		s.retiredLifetime.Add(1)
	case RetiredAddressGone:
		s.retiredGone.Add(1)
	case RetiredServerClosed:
		s.retiredClosed.Add(1)
	case RetiredDead:
		s.retiredDead.Add(1)
	}
}

// addUpstream returns the counters of the upstream client name, new.
func (s *Stats) addUpstream(name string) *upstreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.upstreams == nil {
		s.upstreams = make(map[string]*upstreamStats)
	}
	u := new(upstreamStats)
	s.upstreams[name] = u
	return u
}

// connStates are the counters of Snapshot that need an observer.
type connStates struct {
	on      bool         // observed: the counters below are kept; set before use
	inUse   atomic.Int64 // connections carrying a request
	waiting atomic.Int64 // admitted requests without a connection yet
}

// fill sets s's connection states from c and s.ConnsOpen, or -1 if they are not kept.
func (c *connStates) fill(s *Snapshot) {
	if !c.on {
		s.ConnsIdle, s.ConnsInUse, s.Waiting = -1, -1, -1
		return
	}
	s.ConnsInUse = max(c.inUse.Load(), 0)
	s.ConnsIdle = max(s.ConnsOpen-s.ConnsInUse, 0)
	s.Waiting = max(c.waiting.Load(), 0)
}

// upstreamStats are the counters of one upstream client.
type upstreamStats struct {
	requests, inFlight, waiting, failed, retries, budgetRefused atomic.Int64
}
