package httpfx

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

// Resolver looks up the IP addresses of a host. *net.Resolver implements it; tests supply
// their own to change an answer. network is "ip", "ip4" or "ip6". It must be safe for
// concurrent use.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

const (
	// dnsNegativeTTL is how long a failed lookup without a stale answer to fall back on is
	// remembered, so that a burst of requests to a name that does not resolve sends the
	// resolver one query, not one each.
	dnsNegativeTTL = time.Second

	// dnsMaxNames bounds the names the cache remembers; past it, lookups are not cached.
	dnsMaxNames = 4096

	// dnsLookupTimeout bounds a background refresh.
	dnsLookupTimeout = 10 * time.Second

	// fallbackDelay is how long a dial waits on the first address family before it tries
	// the other one too, as net.Dialer's default (RFC 6555, Happy Eyeballs).
	fallbackDelay = 300 * time.Millisecond
)

// dnsCache resolves and dials for the owned transport: it caches each name's addresses for
// DNSTTL, refreshes names in use in the background before they expire, serves the last good
// answer for DNSStaleTTL while the resolver fails, remembers failures for dnsNegativeTTL,
// merges concurrent lookups of one name, and dials dual-stack hosts as net.Dialer does. When a
// refresh drops an address, onGone is told, so that connections to it are retired. It owns
// the goroutines of its refreshes: close stops them and waits. It is safe for concurrent use.
type dnsCache struct {
	r      Resolver
	dialer *net.Dialer
	ttl    time.Duration // zero: no cache
	stale  time.Duration
	clock  *clock
	onGone func(host string, keep []netip.Addr) // a refresh of host returned only keep

	next   atomic.Uint32   // rotates the address each dial starts at
	ctx    context.Context // of the background refreshes; cancelled by close
	cancel context.CancelFunc

	mu      sync.Mutex
	names   map[string]*dnsEntry
	closed  bool
	refresh sync.WaitGroup
}

// dnsEntry is one name's answer. Its fields but refreshAt are guarded by dnsCache.mu.
type dnsEntry struct {
	addrs   []netip.Addr  // the last good answer; nil if none
	err     error         // the last lookup's error, if it failed
	at      time.Time     // when addrs (or, for a failure, err) was looked up
	pending chan struct{} // closed when the lookup in flight ends; nil if none

	// refreshAt is when, on the owner's clock, the answer is due for a background refresh:
	// a connection to the name checks it when a request takes it, with no lock or lookup.
	refreshAt atomic.Int64
}

func newDNSCache(cfg Config, r Resolver, clk *clock) *dnsCache {
	d := &dnsCache{
		r:      r,
		dialer: &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: cfg.KeepAlive},
		ttl:    cfg.DNSTTL,
		stale:  cfg.DNSStaleTTL,
		clock:  clk,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if d.r == nil {
		d.r = net.DefaultResolver // read only: httpfx never changes it
	}
	return d
}

// resolvedConn is a connection dial made to a cached name, with the name's entry, so that
// the connection can ask for a refresh when a request takes it. connSet unwraps it.
type resolvedConn struct {
	net.Conn
	host  string
	entry *dnsEntry
}

// dial is the owned transport's DialContext: it resolves addr's host (an IP address needs
// no lookup) and dials its addresses.
func (d *dnsCache) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("httpfx: dial %q: %w", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("httpfx: dial %q: port %q: want a number from 0 to 65535: %w", addr, portStr, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return d.dialer.DialContext(ctx, network, netip.AddrPortFrom(ip, uint16(port)).String())
	}
	ips, e, err := d.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	c, err := d.dialAddrs(ctx, network, ips, uint16(port))
	if err != nil || e == nil {
		return c, err
	}
	return &resolvedConn{Conn: c, host: host, entry: e}, nil
}

// lookup returns host's addresses and cache entry: from the cache while fresh, or stale
// while the resolver fails; otherwise it looks them up, merged with any lookup of host in
// flight.
func (d *dnsCache) lookup(ctx context.Context, host string) ([]netip.Addr, *dnsEntry, error) {
	if d.ttl <= 0 {
		addrs, err := d.resolve(ctx, host)
		return addrs, nil, err
	}
	for {
		d.mu.Lock()
		e := d.names[host]
		if e == nil {
			if len(d.names) >= dnsMaxNames {
				d.mu.Unlock()
				addrs, err := d.resolve(ctx, host)
				return addrs, nil, err
			}
			if d.names == nil {
				d.names = make(map[string]*dnsEntry)
			}
			e = new(dnsEntry)
			d.names[host] = e
		}
		age := time.Since(e.at)
		switch {
		case e.addrs != nil && age < d.ttl:
			addrs := e.addrs
			if age >= d.ttl*3/4 {
				d.refreshLocked(host, e) // before it expires, so that no dial waits for it
			}
			d.mu.Unlock()
			return addrs, e, nil
		case e.addrs != nil && e.err != nil && age < d.ttl+d.stale:
			// The resolver failed: the last good answer, at once; a refresh is due again
			// dnsNegativeTTL after the failure.
			addrs := e.addrs
			if d.clock.now() >= e.refreshAt.Load() {
				d.refreshLocked(host, e)
			}
			d.mu.Unlock()
			return addrs, e, nil
		case e.err != nil && e.addrs == nil && age < dnsNegativeTTL:
			err := e.err
			d.mu.Unlock()
			return nil, nil, err
		case d.closed:
			d.mu.Unlock()
			return nil, nil, errDialAfterStop
		}
		// Look it up in the background, bounded by dnsLookupTimeout and the cache's life, not
		// by this dial's context (net/http's has no deadline): a dial that gives up waiting
		// leaves the lookup to the others, and no dial's cancellation is cached as an answer.
		d.refreshLocked(host, e)
		p := e.pending
		d.mu.Unlock()
		select {
		case <-p:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("httpfx: lookup %s: %w", host, ctx.Err())
		}
	}
}

// due asks for a background refresh of host's entry e if its answer is due for one; a
// connection calls it when a request takes it, so that names whose connections are all
// pooled, and dial nothing, still notice an address that DNS dropped. It takes a lock only
// when a refresh is due.
func (d *dnsCache) due(host string, e *dnsEntry, now int64) {
	if now < e.refreshAt.Load() {
		return
	}
	d.mu.Lock()
	d.refreshLocked(host, e)
	d.mu.Unlock()
}

// store records the result of a lookup of host and returns what a dial should use.
func (d *dnsCache) store(host string, e *dnsEntry, addrs []netip.Addr, err error) ([]netip.Addr, error) {
	d.mu.Lock()
	close(e.pending)
	e.pending = nil
	now := time.Now()
	if err == nil {
		old := e.addrs
		e.addrs, e.err, e.at = addrs, nil, now
		e.refreshAt.Store(d.clock.now() + int64(d.ttl*3/4))
		d.mu.Unlock()
		if old != nil && d.onGone != nil {
			// An address is gone once two answers in a row leave it out: names whose answers
			// rotate through a larger set (object stores, large load balancers) do not retire
			// their connections on every refresh.
			d.onGone(host, append(slices.Clone(addrs), old...))
		}
		return addrs, nil
	}
	defer d.mu.Unlock()
	e.err = err
	if e.addrs == nil {
		e.at = now // the start of the negative answer
	}
	e.refreshAt.Store(d.clock.now() + int64(dnsNegativeTTL)) // try again, not on every request
	if e.addrs != nil && now.Sub(e.at) < d.ttl+d.stale {
		return e.addrs, nil // the last good answer, while the resolver fails
	}
	e.addrs, e.at = nil, now
	return nil, err
}

// refreshLocked looks host up again in the background, unless a lookup is in flight or the
// cache is closed. d.mu is held.
func (d *dnsCache) refreshLocked(host string, e *dnsEntry) {
	if e.pending != nil || d.closed {
		return
	}
	e.pending = make(chan struct{})
	d.refresh.Add(1)
	go func() {
		defer d.refresh.Done()
		ctx, cancel := context.WithTimeout(d.ctx, dnsLookupTimeout)
		defer cancel()
		addrs, err := d.resolve(ctx, host)
		d.store(host, e, addrs, err)
	}()
}

// close stops the background refreshes and waits for them.
func (d *dnsCache) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.refresh.Wait()
}

// resolve asks the resolver, with an error that names the host.
func (d *dnsCache) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	addrs, err := d.r.LookupNetIP(ctx, "ip", host)
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

// dialAddrs dials ips in order, as net.Dialer does for a name: the addresses of the first
// one's family first, and those of the other family in parallel once fallbackDelay has
// passed without a connection, so that a dual-stack host still connects when one family is
// unreachable. The first connection wins; the others are closed.
func (d *dnsCache) dialAddrs(ctx context.Context, network string, ips []netip.Addr, port uint16) (net.Conn, error) {
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
	k := int(d.next.Add(1))
	primary = slices.Concat(primary[k%len(primary):], primary[:k%len(primary)])
	if len(fallback) > 0 {
		fallback = slices.Concat(fallback[k%len(fallback):], fallback[:k%len(fallback)])
	}
	if len(fallback) == 0 {
		return d.dialSerial(ctx, network, primary, port)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, 2)
	start := func(ips []netip.Addr) {
		c, err := d.dialSerial(ctx, network, ips, port)
		results <- result{c, err}
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

// dialSerial dials ips one after another until one connects.
func (d *dnsCache) dialSerial(ctx context.Context, network string, ips []netip.Addr, port uint16) (net.Conn, error) {
	var firstErr error
	for _, ip := range ips {
		c, err := d.dialer.DialContext(ctx, network, netip.AddrPortFrom(ip, port).String())
		if err == nil {
			return c, nil
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
