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

	// maxPeers bounds the addresses whose idle bound httpfx remembers.
	maxPeers = 4096
)

// health is what httpfx knows of the servers its transport dials, so that a connection is
// retired before it can lose a request: each dialled address's idle bound (how long its
// server keeps an idle connection open), learned from Keep-Alive headers and from the
// server's closes of idle connections, and the settings that retire connections (lifetime,
// dead HTTP/2 peers). The connections themselves check it (healthconn.go). It is safe for
// concurrent use.
type health struct {
	stats    *Stats
	clock    *clock
	lifetime time.Duration // Config.MaxConnLifetime
	deadAt   time.Duration // a write unanswered this long before net/http closes: dead

	mu    sync.Mutex
	peers map[string]*peer // by dialled address
}

// peer is what httpfx knows of one dialled address.
type peer struct {
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
	return h
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
	p := new(peer)
	h.peers[addr] = p
	return p
}

// keepAlive learns the idle bound a server announces in a "Keep-Alive: timeout=N" header, for
// the address u's connection dialled (unknown addresses, such as a proxy's origin, are left
// alone).
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

// idleBounds returns the learned idle bound of every address that has one in force.
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
