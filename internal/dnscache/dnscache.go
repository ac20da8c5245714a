// Package dnscache resolves and dials for httpfx's transport: it caches each name's
// addresses, refreshes the names in use in the background before their answer expires, serves
// the last good answer while the resolver fails or hangs, and dials dual-stack hosts as
// net.Dialer does. It needs only a resolver, a clock of its own and a callback; it knows
// nothing of HTTP.
package dnscache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Resolver looks up the IP addresses of a host; *net.Resolver implements it. network is
// "ip", "ip4" or "ip6". It must be safe for concurrent use.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config holds the settings of a Cache. A zero TTL turns the cache off: every dial looks up
// its name. A zero StaleTTL means an answer is not used past TTL.
type Config struct {
	TTL         time.Duration // how long an answer is fresh
	StaleTTL    time.Duration // how long past TTL the last good answer is still served
	DialTimeout time.Duration // bounds one dial, over all of a name's addresses; zero: none
	KeepAlive   time.Duration // TCP keep-alive of the connections dialled; zero: Go's default
}

const (
	// NegativeTTL is how long a failed lookup is remembered: a name that never resolved fails
	// at once meanwhile, and a name with a good answer is not looked up again sooner.
	NegativeTTL = time.Second

	// lookupTimeout bounds one lookup.
	lookupTimeout = 10 * time.Second

	// maxNames bounds the names the cache remembers; past it, lookups are not cached.
	maxNames = 4096

	// fallbackDelay is how long a dial waits on the first address family before it tries
	// the other one too, as net.Dialer's default (RFC 6555, Happy Eyeballs).
	fallbackDelay = 300 * time.Millisecond

	// minAddrTimeout is the least time one address of several gets, as net.Dialer gives it.
	minAddrTimeout = 2 * time.Second
)

// ErrClosed is the error of a dial after Close.
var ErrClosed = errors.New("dns cache closed")

// Cache resolves and dials. A name's answer is fresh for TTL; from three quarters of TTL on,
// a dial or a reused connection (Due) starts a background refresh, at most one per name and,
// after a failure, no sooner than NegativeTTL later. The last good answer is served, at once,
// until TTL+StaleTTL have passed since it was looked up, whatever the resolver does
// meanwhile: only a name with no usable answer waits for a lookup, which the first dial that
// needs it runs in its own goroutine, the others waiting for it. Background refreshes run
// only between Start and Close, so a Cache that is never started leaves no goroutine behind.
// When a refresh drops an address, onGone is told. It is safe for concurrent use.
type Cache struct {
	r        Resolver
	cfg      Config
	dialAddr func(ctx context.Context, network, addr string) (net.Conn, error) // a net.Dialer's; tests change it
	epoch    time.Time
	onGone   func(host string, keep []netip.Addr)

	next atomic.Uint32 // rotates the address each dial starts at

	mu      sync.Mutex
	names   map[string]*entry
	ctx     context.Context // of the background refreshes; nil before Start
	cancel  context.CancelFunc
	closed  bool
	running int           // background refreshes in flight
	idle    chan struct{} // closed when running drops to zero after Close; nil before
}

// entry is one name's answer. Its fields but refreshAt are guarded by Cache.mu.
type entry struct {
	addrs    []netip.Addr  // the last good answer; nil if none
	at       int64         // on the cache's clock, when addrs was looked up
	err      error         // the last lookup's error, if it failed
	failedAt int64         // when it failed
	pending  chan struct{} // closed when the lookup in flight ends; nil if none

	// refreshAt is when, on the cache's clock, the answer is due for a background refresh.
	refreshAt atomic.Int64
}

// Conn is a connection dialled to a cached name. Due checks whether its name needs a refresh.
type Conn struct {
	net.Conn
	Host  string // the name looked up
	entry *entry
}

// New returns a Cache that looks names up with r (net.DefaultResolver if nil, which it only
// reads) and tells onGone (if not nil) when an answer drops addresses.
func New(cfg Config, r Resolver, onGone func(host string, keep []netip.Addr)) *Cache {
	if r == nil {
		r = net.DefaultResolver
	}
	d := &net.Dialer{KeepAlive: cfg.KeepAlive}
	return &Cache{r: r, cfg: cfg, dialAddr: d.DialContext, epoch: time.Now(), onGone: onGone}
}

func (c *Cache) now() int64 { return int64(time.Since(c.epoch)) }

// Start allows background refreshes, until Close.
func (c *Cache) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil && !c.closed {
		c.ctx, c.cancel = context.WithCancel(context.Background())
	}
}

// Close refuses further dials, cancels the background refreshes and waits up to grace for
// them to return. It returns how many are still running then: lookups of a Resolver that
// ignores its context, left to finish on their own (their answers are dropped).
func (c *Cache) Close(grace time.Duration) int {
	c.mu.Lock()
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	}
	if c.running == 0 {
		c.mu.Unlock()
		return 0
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	idle := c.idle
	c.mu.Unlock()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-idle:
		return 0
	case <-timer.C:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.running
	}
}

// Dial resolves addr's host (an IP address needs no lookup) and dials its addresses, within
// DialTimeout. A connection to a cached name is a *Conn.
func (c *Cache) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("httpfx: dial %q: %w", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("httpfx: dial %q: port %q: want a number from 0 to 65535: %w", addr, portStr, err)
	}
	if d := c.cfg.DialTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return c.dialAddr(ctx, network, netip.AddrPortFrom(ip, uint16(port)).String())
	}
	ips, e, err := c.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	conn, err := c.dialAddrs(ctx, network, ips, uint16(port))
	if err != nil || e == nil {
		return conn, err
	}
	return &Conn{Conn: conn, Host: host, entry: e}, nil
}

// Due starts a background refresh of conn's name if its answer is due for one: a connection
// reused from the pool calls it, so that a name whose connections are all pooled, and dial
// nothing, still notices an address that DNS dropped. It takes a lock only when one is due.
func (c *Cache) Due(conn *Conn) {
	e := conn.entry
	if c.now() < e.refreshAt.Load() {
		return
	}
	c.mu.Lock()
	c.refreshLocked(conn.Host, e)
	c.mu.Unlock()
}

// lookup returns host's addresses and cache entry.
func (c *Cache) lookup(ctx context.Context, host string) ([]netip.Addr, *entry, error) {
	if c.cfg.TTL <= 0 {
		addrs, err := c.resolve(ctx, host)
		return addrs, nil, err
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, nil, ErrClosed
		}
		e := c.names[host]
		if e == nil {
			if len(c.names) >= maxNames {
				c.mu.Unlock()
				addrs, err := c.resolve(ctx, host)
				return addrs, nil, err
			}
			if c.names == nil {
				c.names = make(map[string]*entry)
			}
			e = new(entry)
			c.names[host] = e
		}
		now := c.now()
		switch {
		case e.addrs != nil && now-e.at < int64(c.cfg.TTL+c.cfg.StaleTTL):
			// Fresh, or the last good answer while the resolver fails or hangs: at once.
			if now >= e.refreshAt.Load() {
				c.refreshLocked(host, e)
			}
			addrs := e.addrs
			c.mu.Unlock()
			return addrs, e, nil
		case e.err != nil && now-e.failedAt < int64(NegativeTTL):
			err := e.err // no usable answer, and the resolver failed just now
			c.mu.Unlock()
			return nil, nil, err
		case e.pending == nil:
			// No usable answer: this dial looks it up, and the others wait for it.
			p := make(chan struct{})
			e.pending = p
			c.mu.Unlock()
			lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
			addrs, err := c.resolve(lctx, host)
			cancel()
			if err != nil && ctx.Err() != nil {
				c.abandon(e) // this dial gave up: its cancellation is no answer
				return nil, nil, fmt.Errorf("httpfx: lookup %s: %w", host, ctx.Err())
			}
			c.store(host, e, addrs, err)
			if err != nil {
				return nil, nil, err
			}
			return addrs, e, nil
		}
		p := e.pending
		c.mu.Unlock()
		select {
		case <-p:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("httpfx: lookup %s: %w", host, ctx.Err())
		}
	}
}

// refreshLocked looks host up again in the background, unless a lookup is in flight or the
// cache is not running. c.mu is held.
func (c *Cache) refreshLocked(host string, e *entry) {
	if e.pending != nil || c.ctx == nil || c.closed {
		return
	}
	e.pending = make(chan struct{})
	c.running++
	go func() {
		defer c.done()
		ctx, cancel := context.WithTimeout(c.ctx, lookupTimeout)
		defer cancel()
		addrs, err := c.resolve(ctx, host)
		if c.ctx.Err() != nil {
			c.abandon(e) // closed: the answer is nobody's
			return
		}
		c.store(host, e, addrs, err)
	}()
}

// done counts a background refresh out.
func (c *Cache) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running--
	if c.running == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
}

// abandon ends the lookup in flight of e without an answer.
func (c *Cache) abandon(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(e.pending)
	e.pending = nil
}

// store records the result of a lookup of host.
func (c *Cache) store(host string, e *entry, addrs []netip.Addr, err error) {
	c.mu.Lock()
	close(e.pending)
	e.pending = nil
	now := c.now()
	if err != nil {
		e.err, e.failedAt = err, now
		e.refreshAt.Store(now + int64(NegativeTTL)) // try again, but not on every dial
		c.mu.Unlock()
		return
	}
	old := e.addrs
	e.addrs, e.at, e.err = addrs, now, nil
	e.refreshAt.Store(now + int64(c.cfg.TTL*3/4))
	c.mu.Unlock()
	if old != nil && c.onGone != nil {
		// An address is gone once two answers in a row leave it out: names whose answers
		// rotate through a larger set (object stores, large load balancers) do not retire
		// their connections on every refresh.
		c.onGone(host, append(slices.Clone(addrs), old...))
	}
}

// resolve asks the resolver, with an error that names the host.
func (c *Cache) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	addrs, err := c.r.LookupNetIP(ctx, "ip", host)
	if err == nil && len(addrs) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return nil, fmt.Errorf("httpfx: lookup %s: %w", host, err)
	}
	out := make([]netip.Addr, len(addrs)) // the resolver's slice is its own
	for i, a := range addrs {
		out[i] = a.Unmap()
	}
	return out, nil
}

// dialAddrs dials ips as net.Dialer does for a name: the addresses of the first one's family
// first, and those of the other family in parallel once fallbackDelay has passed without a
// connection, so that a dual-stack host still connects when one family is unreachable. The
// first connection wins; the others are closed.
func (c *Cache) dialAddrs(ctx context.Context, network string, ips []netip.Addr, port uint16) (net.Conn, error) {
	var primary, fallback []netip.Addr
	for _, ip := range ips {
		switch {
		case network == "tcp4" && !ip.Is4(), network == "tcp6" && !ip.Is6():
		case len(primary) == 0 || ip.Is4() == primary[0].Is4():
			primary = append(primary, ip)
		default:
			fallback = append(fallback, ip)
		}
	}
	if len(primary) == 0 {
		return nil, fmt.Errorf("httpfx: dial: no %s address among %v", network, ips)
	}
	// Each dial starts at the next address, as a resolver that rotates its answers would make
	// net/http do: a name's new connections spread over its addresses.
	k := int(c.next.Add(1))
	primary = slices.Concat(primary[k%len(primary):], primary[:k%len(primary)])
	if len(fallback) == 0 {
		return c.dialSerial(ctx, network, primary, port)
	}
	fallback = slices.Concat(fallback[k%len(fallback):], fallback[:k%len(fallback)])
	type result struct {
		c   net.Conn
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, 2)
	start := func(ips []netip.Addr) {
		conn, err := c.dialSerial(ctx, network, ips, port)
		results <- result{conn, err}
	}
	go start(primary)
	timer := time.NewTimer(fallbackDelay)
	defer timer.Stop()
	var firstErr error
	for pending, started := 1, false; pending > 0; {
		select {
		case <-timer.C:
			if !started {
				started = true
				pending++
				go start(fallback)
			}
		case r := <-results:
			pending--
			if r.err == nil {
				cancel()
				for ; pending > 0; pending-- { // close the loser, if it connects too
					if l := <-results; l.c != nil {
						l.c.Close()
					}
				}
				return r.c, nil
			}
			if firstErr == nil {
				firstErr = r.err
			}
			if !started { // the first family failed at once: try the other now
				started = true
				pending++
				go start(fallback)
			}
		}
	}
	return nil, firstErr
}

// dialSerial dials ips one after another until one connects. As net.Dialer does, each
// address gets an equal share of the time left (at least minAddrTimeout), so that one
// unreachable address cannot use up the whole DialTimeout.
func (c *Cache) dialSerial(ctx context.Context, network string, ips []netip.Addr, port uint16) (net.Conn, error) {
	var firstErr error
	for i, ip := range ips {
		actx := ctx
		if deadline, ok := ctx.Deadline(); ok && i < len(ips)-1 {
			share := time.Until(deadline) / time.Duration(len(ips)-i)
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, max(share, minAddrTimeout))
			defer cancel()
		}
		conn, err := c.dialAddr(actx, network, netip.AddrPortFrom(ip, port).String())
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}
