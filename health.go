package httpfx

import (
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// learnMin is the shortest idle time after which a server's close may be an idle timer's:
	// a close right after a response is the server's choice for that response, and under load a
	// restart or a reload closes connections idle for a few milliseconds, so such a close marks
	// its moment as no timer's; idle timers that short are not seen in practice.
	learnMin = 50 * time.Millisecond

	// peekAfter is how long a connection must have been idle before a request that takes it
	// first checks, with one non-blocking system call, that the server has not closed it.
	// Connections reused sooner are never checked: a server's idle timer is longer.
	peekAfter = 10 * time.Millisecond

	// maxMargin bounds how much sooner than its server httpfx retires an idle connection.
	maxMargin = time.Second

	// momentWindow groups the closes of one moment: a server that restarts, drains or goes
	// away closes its idle connections within it, whatever their idle time.
	momentWindow = 100 * time.Millisecond

	// observedFor is how long evidence of an idle timer holds: a moment of closes counts that
	// long, and a bound holds that long without a close that confirms it.
	observedFor = 10 * time.Minute

	// keptFor is how long a connection found open after an idle time refutes a timer shorter
	// than that time: long enough to outlive a deploy, short enough to follow a server whose
	// timeout was lowered.
	keptFor = time.Minute

	// probeEvery is how often a connection idle past its address's learned bound is let
	// through to be checked, instead of retired, so that a bound that is wrong, or no longer
	// right, is found out: the request's first write checks the connection as late as can be,
	// as for any connection taken after an idle spell.
	probeEvery = time.Second

	// maxPeers bounds the addresses whose idle bound httpfx remembers.
	maxPeers = 4096
)

// health is what httpfx knows of the servers its transport dials, so that a connection is
// retired before it can lose a request: each dialled address's idle bound (how long its
// server keeps an idle connection open), from Keep-Alive headers and from evidence of an idle
// timer in the server's closes, and the settings that retire connections (lifetime, dead
// HTTP/2 peers). The connections themselves check it (healthconn.go). It is safe for
// concurrent use.
type health struct {
	stats    *Stats
	clock    *clock
	lifetime time.Duration // Config.MaxConnLifetime
	deadAt   time.Duration // a write unanswered this long before net/http closes: dead

	// idleOpen returns the longest idle time, at now, of the open HTTP/1.1 connections to an
	// address; nil: unknown. The connections set it (connSet.longestIdle).
	idleOpen func(addr string, now int64) int64

	mu    sync.Mutex // guards adding to peers
	peers sync.Map   // by dialled address: *peer; read without a lock on every Keep-Alive header
	n     int        // len(peers)
}

// peer is what httpfx knows of one dialled address: its server's idle bound, and the
// evidence for it.
//
// A bound is learned from closes only on evidence of an idle timer: of the last momentsKept
// moments of closes (closes within momentWindow of one another), at least agreeing, and two
// in three, came at about the same idle time, while no connection was found open after a far
// longer idle time (keptFor) and none to the address is open and idle for far longer now. A
// moment in which the server also closed a connection under a request teaches nothing. The
// closes of one moment at different idle times (a restart, a drain, a load balancer letting
// go) teach nothing: their connections are simply replaced. A learned bound is re-checked by a probe every probeEvery
// (a connection past it is checked instead of retired): found open well past it, it is
// dropped; found closed, it is confirmed. Only a connection idle long enough to refute the
// bound is let through: one the server, if the bound is right, closed long ago. Unconfirmed
// for observedFor, it expires. A bound from a Keep-Alive header holds until another header
// says otherwise.
type peer struct {
	addr       string
	h          *health
	bound      atomic.Int64 // nanoseconds the server keeps an idle connection; zero: unknown
	fromHeader atomic.Bool  // bound came from a Keep-Alive header
	judging    atomic.Bool  // a moment of closes waits to be judged

	learnedAt atomic.Int64 // on health's clock, when a close last taught or confirmed bound
	probedAt  atomic.Int64 // when a connection past bound was last let through

	mu      sync.Mutex
	moment  closeMoment             // the closes of the current moment
	moments [momentsKept]pastMoment // the last moments judged, newest at next-1
	next    int                     // where the next moment judged goes in moments
	kept    int64                   // the longest idle time after which a connection was found open; zero: none
	keptAt  int64                   // when
}

// pastMoment is what a judged moment of closes says: the idle time of its closes, or zero if
// it was no timer's (its closes came at different idle times, or a connection was open after
// far longer).
type pastMoment struct {
	idle, at int64
}

// momentsKept is how many moments a peer weighs, and agreeing is how many of them must agree
// on an idle time, two in three at least, for it to be the server's bound: a timer closes each
// connection at the same idle time, while closes at one moment for other reasons (restarts,
// reloads, drains) come at whatever idle time their connections had, and, one moment after
// another, agree only by chance.
const (
	momentsKept = 6
	agreeing    = 3
)

// closeMoment is the closes of idle connections within momentWindow of the first.
type closeMoment struct {
	at, min, max int64 // when it began; the shortest and longest idle time of its closes
	n            int   // how many
	busy         bool  // the server also closed a connection under a request it had just taken
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
	return h
}

// peerFor returns the record of addr, new if needed, or nil past maxPeers.
func (h *health) peerFor(addr string) *peer {
	if p, ok := h.peers.Load(addr); ok {
		return p.(*peer)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.peers.Load(addr); ok {
		return p.(*peer)
	}
	if h.n >= maxPeers {
		return nil
	}
	p := &peer{addr: addr, h: h}
	h.peers.Store(addr, p)
	h.n++
	return p
}

// keepAlive learns the idle bound a server announces in a "Keep-Alive: timeout=N" header, for
// the address u's connection dialled (unknown addresses, such as a proxy's origin, are left
// alone). It takes no lock.
func (h *health) keepAlive(u *url.URL, v string) {
	secs, ok := keepAliveTimeout(v)
	if !ok {
		return
	}
	p, ok := h.peers.Load(net.JoinHostPort(u.Hostname(), portOf(u)))
	if !ok {
		return
	}
	pr := p.(*peer)
	if d := int64(time.Duration(secs) * time.Second); pr.bound.Load() != d || !pr.fromHeader.Load() {
		pr.bound.Store(d)
		pr.fromHeader.Store(true)
	}
}

// maxKeepAliveSecs caps the timeout a Keep-Alive header may announce: a day is longer than any
// connection stays idle in the pool, and a bogus huge value cannot wrap to a tiny bound.
const maxKeepAliveSecs = 24 * 60 * 60

// closing is told that the server of u's dialled address ends a connection in use with its
// response (Connection: close): as a server does that restarts, drains or goes away (nginx,
// Go's Server.Shutdown, Envoy), or one that caps the requests of a connection, and not an
// idle timer. The closes of that moment teach nothing.
func (h *health) closing(u *url.URL) {
	if p, ok := h.peers.Load(net.JoinHostPort(u.Hostname(), portOf(u))); ok {
		p.(*peer).busy(0, h.clock.now())
	}
}

// keepAliveTimeout returns the timeout parameter of a Keep-Alive header value, in seconds, up
// to maxKeepAliveSecs.
func keepAliveTimeout(v string) (int, bool) {
	for v != "" {
		var part string
		part, v, _ = strings.Cut(v, ",")
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "timeout") {
			n, err := strconv.Atoi(strings.TrimSpace(val))
			if errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(strings.TrimSpace(val), "-") {
				n, err = maxKeepAliveSecs, nil
			}
			return min(n, maxKeepAliveSecs), err == nil && n > 0
		}
	}
	return 0, false
}

// idleBounds returns the idle bound in force of every address that has one.
func (h *health) idleBounds() map[string]time.Duration {
	var out map[string]time.Duration
	now := h.clock.now()
	h.peers.Range(func(k, v any) bool {
		p := v.(*peer)
		if p.retireAfter(now) > 0 {
			if out == nil {
				out = make(map[string]time.Duration)
			}
			out[k.(string)] = time.Duration(p.bound.Load())
		}
		return true
	})
	return out
}

// tolerance is how far apart the idle times of two closes may be and still be the same
// timer's, or a connection found open past a bound still be within it: a close is seen when
// net/http's read loop wakes up, late on a busy machine. spread is how far apart the closes of
// one moment may be: a timer closes together the connections that went idle together, while a
// restart closes connections idle for all sorts of times.
func tolerance(d int64) int64 { return d / 4 }

func spread(d int64) int64 { return max(d/16, int64(5*time.Millisecond)) }

// refuted is the idle time past which a connection found open refutes a timer at d: well past
// it, twice as long and a quarter of a second more at least, since a server's timer fires late
// on a busy machine too.
func refuted(d int64) int64 { return max(2*d, d+int64(250*time.Millisecond)) }

// closed is told that the server closed a connection that had been idle for d, at now on
// health's clock. A connection closed barely idle was not closed by a timer: its moment,
// whose other closes may look like a timer's (connections that went idle together under a
// stall), teaches nothing.
func (p *peer) closed(d time.Duration, now int64) {
	if p.fromHeader.Load() {
		return
	}
	if d < learnMin {
		p.busy(0, now)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roll(now)
	m := &p.moment
	if m.n == 0 && !m.busy {
		*m = closeMoment{at: now, min: int64(d), max: int64(d)}
	} else if m.n == 0 {
		m.min, m.max = int64(d), int64(d)
	}
	m.min, m.max, m.n = min(m.min, int64(d)), max(m.max, int64(d)), m.n+1
	p.judging.Store(true)
}

// busy is told that the server closed or reset a connection under a request, one that had
// been idle for d at most before the request took it: a server that does so to connections in
// use is restarting or going away, not timing out idle ones, and the closes of that moment
// teach nothing. A request that took a connection idle for a while may just have met the
// server's idle timer: that close is no sign.
func (p *peer) busy(d time.Duration, now int64) {
	if d >= learnMin {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.roll(now)
	m := &p.moment
	if m.n == 0 && !m.busy {
		m.at = now
	}
	m.busy = true
	p.judging.Store(true)
}

// roll judges the current moment of closes if now is past its window. p.mu is held.
func (p *peer) roll(now int64) {
	if m := &p.moment; (m.n > 0 || m.busy) && now-m.at > int64(momentWindow) {
		p.judge(now)
	}
}

// judge weighs the moment of closes that ended, as evidence of an idle timer. p.mu is held.
func (p *peer) judge(now int64) {
	m := p.moment
	p.moment = closeMoment{}
	p.judging.Store(false)
	if m.n == 0 {
		return
	}
	d := m.min
	switch {
	case m.busy: // connections in use closed too
		d = 0
	case m.max-m.min > spread(m.min): // closes at different idle times, at one moment
		d = 0
	case p.kept > refuted(d) && now-p.keptAt < int64(keptFor): // one stayed open far longer
		d = 0
	case p.h != nil && p.h.idleOpen != nil && p.h.idleOpen(p.addr, now) > refuted(d): // one is open, idle far longer
		d = 0
	}
	p.moments[p.next] = pastMoment{idle: d, at: now}
	p.next = (p.next + 1) % momentsKept
	if d == 0 {
		return
	}
	if b := p.bound.Load(); b != 0 && !p.fromHeader.Load() && abs(d-b) <= tolerance(b) {
		p.learnedAt.Store(now) // confirmed
		return
	}
	agree, total, least := 0, 0, d
	for _, pm := range p.moments {
		if pm.at == 0 || now-pm.at >= int64(observedFor) {
			continue
		}
		total++
		if pm.idle != 0 && abs(pm.idle-d) <= tolerance(min(pm.idle, d)) {
			agree++
			least = min(least, pm.idle)
		}
	}
	if agree >= agreeing && 3*agree >= 2*total {
		p.learnedAt.Store(now)
		p.bound.Store(least)
	}
}

// open is told that a connection was found open after an idle time of d, at now: the
// server's timer, if it has one, is longer. A learned bound that d is well past is dropped.
func (p *peer) open(d time.Duration, now int64) {
	if d < learnMin || p.fromHeader.Load() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if int64(d) > p.kept || now-p.keptAt >= int64(keptFor) {
		p.kept, p.keptAt = int64(d), now
	}
	if b := p.bound.Load(); b != 0 && int64(d) > refuted(b) {
		p.bound.Store(0) // refuted
	}

}

// retireAfter is how long a connection to p may have been idle before it is retired: the
// idle bound less a margin (see margin). Zero: no bound is in force. It judges a moment of
// closes that has ended, if one waits.
func (p *peer) retireAfter(now int64) time.Duration {
	if p.judging.Load() {
		p.mu.Lock()
		if (p.moment.n > 0 || p.moment.busy) && now-p.moment.at > int64(momentWindow) {
			p.judge(now)
		}
		p.mu.Unlock()
	}
	b := time.Duration(p.bound.Load())
	if b <= 0 {
		return 0
	}
	if !p.fromHeader.Load() && now-p.learnedAt.Load() >= int64(observedFor) {
		p.bound.CompareAndSwap(int64(b), 0) // expired
		return 0
	}
	return b - margin(b)
}

// margin is how much sooner than its server's idle bound b a connection is retired: the idle
// time httpfx measures starts when it has read the response, later than the server's timer
// started, after it wrote it, by as long as the response took to be read, on a busy machine
// tens of milliseconds; and the request must reach the server's application, not just its
// TCP, before the timer fires. A quarter of the bound, at least 50ms (but half of a bound
// shorter than 100ms), at most maxMargin.
func margin(b time.Duration) time.Duration {
	return min(max(b/4, min(b/2, 50*time.Millisecond)), maxMargin)
}

// probe reports whether a connection idle for idle, past the bound, may be let through to
// check the bound, now: one every probeEvery, for a bound learned from closes, and only a
// connection idle long enough to refute it. If the bound is right, its server closed that
// connection long ago, and the request's first write, which checks, finds it closed: no
// request is sent into a close.
func (p *peer) probe(idle time.Duration, now int64) bool {
	last := p.probedAt.Load()
	return !p.fromHeader.Load() && int64(idle) > refuted(p.bound.Load()) &&
		now-last >= int64(probeEvery) && p.probedAt.CompareAndSwap(last, now)
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
