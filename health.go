package httpfx

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// learnMin is the shortest idle time after which a server's close teaches anything: a
	// close right after a response is the server's choice for that response, not a timer.
	learnMin = 10 * time.Millisecond

	// peekAfter is how long a connection must have been idle before a request that takes it
	// first checks, with one non-blocking system call, that the server has not closed it.
	// Connections reused sooner are never checked: a server's idle timer is longer.
	peekAfter = 10 * time.Millisecond

	// maxMargin bounds how much sooner than its server httpfx retires an idle connection.
	maxMargin = time.Second

	// momentWindow groups the closes of one moment: a server that restarts, drains or goes
	// away closes its idle connections within it, whatever their idle time.
	momentWindow = 100 * time.Millisecond

	// observedFor is how long evidence of an idle timer holds: a candidate waits that long
	// for another moment to agree, and a bound that long for a close that confirms it.
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

	mu    sync.Mutex // guards adding to peers
	peers sync.Map   // by dialled address: *peer; read without a lock on every Keep-Alive header
	n     int        // len(peers)
}

// peer is what httpfx knows of one dialled address: its server's idle bound, and the
// evidence for it.
//
// A bound is learned from closes only on evidence of an idle timer: the closes of two
// moments at least momentWindow apart, each at about the same idle time, while no connection
// was found open after a far longer idle time (keptFor). The closes of one moment at different
// idle times (a restart, a drain, a load balancer letting go) teach nothing: their
// connections are simply replaced. A learned bound is re-checked by a probe every probeEvery
// (a connection past it is checked instead of retired): found open well past it, it is
// dropped; found closed, it is confirmed. Unconfirmed for observedFor, it expires. A bound from a
// Keep-Alive header holds until another header says otherwise.
type peer struct {
	bound      atomic.Int64 // nanoseconds the server keeps an idle connection; zero: unknown
	fromHeader atomic.Bool  // bound came from a Keep-Alive header
	judging    atomic.Bool  // a moment of closes waits to be judged

	learnedAt atomic.Int64 // on health's clock, when a close last taught or confirmed bound
	probedAt  atomic.Int64 // when a connection past bound was last let through

	mu     sync.Mutex
	moment closeMoment // the closes of the current moment
	cand   int64       // a moment's idle time, waiting for another moment to agree; zero: none
	candAt int64       // when
	kept   int64       // the longest idle time after which a connection was found open; zero: none
	keptAt int64       // when
}

// closeMoment is the closes of idle connections within momentWindow of the first.
type closeMoment struct {
	at, min, max int64 // when it began; the shortest and longest idle time of its closes
	n            int   // how many
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
	p := new(peer)
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
func tolerance(d int64) int64 { return max(d/4, int64(10*time.Millisecond)) }

func spread(d int64) int64 { return max(d/16, int64(5*time.Millisecond)) }

// refuted is the idle time past which a connection found open refutes a timer at d: well past
// it, since a server's timer fires late on a busy machine too.
func refuted(d int64) int64 { return max(2*d, d+int64(10*time.Millisecond)) }

// closed is told that the server closed a connection that had been idle for d, at now on
// health's clock.
func (p *peer) closed(d time.Duration, now int64) {
	if d < learnMin || p.fromHeader.Load() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	m := &p.moment
	if m.n > 0 && now-m.at > int64(momentWindow) {
		p.judge(now)
	}
	if m.n == 0 {
		*m = closeMoment{at: now, min: int64(d), max: int64(d)}
	}
	m.min, m.max, m.n = min(m.min, int64(d)), max(m.max, int64(d)), m.n+1
	p.judging.Store(true)
}

// judge weighs the moment of closes that ended, as evidence of an idle timer. p.mu is held.
func (p *peer) judge(now int64) {
	m := p.moment
	p.moment = closeMoment{}
	p.judging.Store(false)
	if m.n == 0 || m.max-m.min > spread(m.min) {
		return // closes at different idle times, at one moment: no timer
	}
	d := m.min
	if p.kept > refuted(d) && now-p.keptAt < int64(keptFor) {
		return // a connection stayed open far longer: not a timer at d
	}
	if b := p.bound.Load(); b != 0 && !p.fromHeader.Load() && abs(d-b) <= tolerance(b) {
		p.learnedAt.Store(now) // confirmed
		return
	}
	if p.cand != 0 && now-p.candAt < int64(observedFor) && abs(d-p.cand) <= tolerance(min(d, p.cand)) {
		p.learnedAt.Store(now)
		p.bound.Store(min(d, p.cand)) // two moments agree
		p.cand = 0
		return
	}
	p.cand, p.candAt = d, now
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
	if p.cand != 0 && int64(d) > refuted(p.cand) {
		p.cand = 0
	}
}

// retireAfter is how long a connection to p may have been idle before it is retired: the
// idle bound less a margin of a quarter of it, at most maxMargin. Zero: no bound is in force.
// It judges a moment of closes that has ended, if one waits.
func (p *peer) retireAfter(now int64) time.Duration {
	if p.judging.Load() {
		p.mu.Lock()
		if p.moment.n > 0 && now-p.moment.at > int64(momentWindow) {
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
	return b - min(b/4, maxMargin)
}

// probe reports whether a connection idle past the bound may be let through to check the
// bound, now: one every probeEvery, for a bound learned from closes.
func (p *peer) probe(now int64) bool {
	last := p.probedAt.Load()
	return !p.fromHeader.Load() && now-last >= int64(probeEvery) && p.probedAt.CompareAndSwap(last, now)
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
