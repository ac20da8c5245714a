package httpfx

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/httpfx/httpfx/internal/dnscache"
)

// owner holds what httpfx built and owns for one app: the transport, the client, their
// counters and connections, and the stop state. It builds them (transport.go), starts them,
// admits requests through the gate, and runs the stop sequence: gate, drain, close, cut.
type owner struct {
	cfg        Config
	log        *zap.Logger
	stats      *Stats
	conns      *connSet
	dns        *dnscache.Cache
	transport  *http.Transport // the transport httpfx built: the only one it closes
	clock      *clock
	timeoutErr error // the error of a request past Config.Timeout
	attemptErr error // the error of an attempt past Config.Retry.AttemptTimeout
	budgets    *budgets
	files      *tlsFiles // keeps the TLS files current; nil if none are

	// Set while the graph is built, before start; read-only afterwards.
	client            *http.Client    // the client httpfx built, nil until built
	rt                *roundTripper   // client's round tripper, shared by the upstream clients
	inUse             *http.Transport // the *http.Transport the client was built over
	inGraph           *http.Client    // the *http.Client the graph hands out (Module only)
	nextType          string          // the type of the round tripper under the client, for the start log
	upstreams         []*upstream     // the upstream clients built
	headerTimeout     time.Duration   // the ResponseHeaderTimeout of the transport in use
	headerTimeoutName string          // what its error calls it
	health            *health         // keeps connections healthy; nil if the transport is not the owned one
	gate              *h2gate         // the HTTP/2 cold-start gate; nil if the transport cannot speak HTTP/2 over TLS
	obs               *observers      // nil unless observed

	requests   requestList   // requests in flight
	stopping   atomic.Bool   // stop has begun: new bodies are watched (request.watch)
	gateClosed chan struct{} // closed when stop begins: no retry waits past it

	drained   chan struct{} // closed once the gate is closed and nothing is in flight
	drainOnce sync.Once
	stopOnce  sync.Once
	stopErr   error
}

func newOwner(cfg Config, log *zap.Logger, res Resolver, obs []Observer) (*owner, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	o := &owner{
		cfg:        cfg,
		log:        log.Named("httpfx"),
		stats:      new(Stats),
		clock:      &clock{epoch: time.Now()},
		timeoutErr: &timeoutError{what: "Config.Timeout", d: cfg.Timeout},
		attemptErr: &timeoutError{what: "Config.Retry.AttemptTimeout", d: cfg.Retry.AttemptTimeout, waiting: "for the response headers"},
		drained:    make(chan struct{}),
		gateClosed: make(chan struct{}),
	}
	o.budgets = newBudgets(cfg.Retry.BudgetPercent, cfg.Retry.BudgetPerSecond, o.clock)
	o.files = r.files
	if r.files != nil {
		r.files.log.Store(o.log)
		o.stats.certNotAfter = r.files.certNotAfter
	}
	o.conns = newConnSet(o.stats)
	o.dns = dnscache.New(dnscache.Config{TTL: cfg.DNSTTL, StaleTTL: cfg.DNSStaleTTL,
		DialTimeout: cfg.DialTimeout, KeepAlive: cfg.KeepAlive}, res, o.conns.markGone)
	o.health = newHealth(cfg, o.stats, o.clock)
	o.stats.bounds = o.health.idleBounds
	o.obs = newObservers(obs, o.stats, o.conns)
	o.transport = newTransport(cfg, r, o.dns.Dial)
	o.requests.init()
	return o, nil
}

// hook returns the lifecycle hook of o: start logs the settings, stop runs the stop sequence.
func (o *owner) hook() fx.Hook {
	return fx.Hook{OnStart: o.start, OnStop: o.stop}
}

// admit counts a request in flight and returns its number, or reports false if the gate is
// closed.
func (o *owner) admit() (int64, bool) {
	if o.stats.gate.Add(1)&closedBit != 0 {
		o.release()
		o.stats.rejected.Add(1)
		return 0, false
	}
	return o.stats.requests.Add(1), true
}

// finish counts an admitted request out of flight.
func (o *owner) finish(failed bool) {
	if failed {
		o.stats.failed.Add(1)
	}
	o.release()
}

// release counts one request out of flight and signals the drain when the last one leaves a
// closed gate.
func (o *owner) release() {
	if o.stats.gate.Add(-1) == closedBit {
		o.signalDrained()
	}
}

func (o *owner) signalDrained() { o.drainOnce.Do(func() { close(o.drained) }) }

// ignoreCloseIdle counts a consumer's CloseIdleConnections call, which must not empty the
// shared pool, and logs the first one.
func (o *owner) ignoreCloseIdle() {
	if o.stats.closeIdleIgnored.Add(1) == 1 {
		o.log.Info("httpfx ignored CloseIdleConnections on a shared client: the pool is shared by every component; the app owner flushes it with httpfx.CloseIdleConnections (further calls are only counted, in Stats)")
	}
}

// start logs the effective settings once, and whether the graph hands out a client or
// transport that httpfx did not build, starts the DNS cache's background refreshes, and
// pre-warms the upstreams that ask for it, as long as ctx allows. It never fails.
func (o *owner) start(ctx context.Context) error {
	o.dns.Start()
	defer o.prewarmUpstreams(ctx)
	c := o.cfg
	o.log.Info("httpfx client ready",
		zap.Duration("timeout", c.Timeout),
		zap.Duration("dial_timeout", c.DialTimeout),
		zap.Duration("keep_alive", c.KeepAlive),
		zap.Duration("tls_handshake_timeout", c.TLSHandshakeTimeout),
		zap.Duration("response_header_timeout", c.ResponseHeaderTimeout),
		zap.Duration("expect_continue_timeout", c.ExpectContinueTimeout),
		zap.Duration("idle_conn_timeout", c.IdleConnTimeout),
		zap.Int("max_idle_conns", c.MaxIdleConns),
		zap.Int("max_idle_conns_per_host", c.MaxIdleConnsPerHost),
		zap.Int("max_conns_per_host", c.MaxConnsPerHost),
		zap.Int64("max_response_header_bytes", c.MaxResponseHeaderBytes),
		zap.Bool("compression", !c.DisableCompression),
		zap.Bool("http2", !c.DisableHTTP2),
		zap.String("proxy", c.proxyForLog()),
		zap.String("tls_min_version", c.TLSMinVersion),
		zap.Bool("tls_extra_roots", c.TLSCAFile != "" || c.TLSCAPEM != ""),
		zap.Bool("tls_client_certificate", c.TLSCertFile != ""),
		zap.Int("tls_session_cache_size", c.TLSSessionCacheSize),
		zap.Duration("tls_reload_interval", c.TLSReloadInterval),
		zap.Bool("tls_ca_reload", c.TLSCAReload),
		zap.Bool("user_agent_set", c.UserAgent != ""),
		zap.Duration("drain_timeout", c.DrainTimeout),
		zap.Duration("max_conn_lifetime", c.MaxConnLifetime),
		zap.Duration("dns_ttl", c.DNSTTL),
		zap.Duration("dns_stale_ttl", c.DNSStaleTTL),
		zap.Duration("http2_send_ping_timeout", c.HTTP2SendPingTimeout),
		zap.Duration("http2_ping_timeout", c.HTTP2PingTimeout),
		zap.Duration("http2_write_byte_timeout", c.HTTP2WriteByteTimeout),
		zap.String("round_tripper", o.nextType),
		zap.Int("retry_max_attempts", c.Retry.MaxAttempts),
	)
	if notAfter := o.stats.Snapshot().ClientCertNotAfter; !notAfter.IsZero() {
		o.log.Info("httpfx client certificate", zap.Time("not_after", notAfter))
	}
	if c.MaxConnsPerHost == 0 || c.MaxConnsPerHost > c.MaxIdleConnsPerHost {
		o.log.Warn("httpfx pool may open more connections per host than it keeps idle; the extra ones are closed after use",
			zap.Int("max_conns_per_host", c.MaxConnsPerHost),
			zap.Int("max_idle_conns_per_host", c.MaxIdleConnsPerHost))
	}
	if c.TLSInsecureSkipVerify {
		o.log.Warn("httpfx TLS certificate verification is OFF (TLSInsecureSkipVerify): anyone on the path can read and change the traffic")
	}
	used := o.stats.Snapshot().Upstreams
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if _, ok := used[name]; !ok {
			o.log.Warn("httpfx upstream is configured but no component takes a client of that name", zap.String("upstream", name))
		}
	}
	if o.inUse != nil && o.inUse != o.transport {
		o.log.Info("httpfx client sends through a caller-supplied *http.Transport; httpfx drains its requests but will not close it")
	}
	if o.inGraph != nil && o.inGraph != o.client {
		o.log.Info("httpfx: a caller-supplied *http.Client is in use; httpfx will neither drain nor close it")
	}
	return nil
}

// stop runs the stop sequence once; later calls return the first call's result.
func (o *owner) stop(ctx context.Context) error {
	o.stopOnce.Do(func() { o.stopErr = o.drain(ctx) })
	return o.stopErr
}

// drain is the stop sequence of the design: gate, drain, close idle, cut past the bound, log.
func (o *owner) drain(ctx context.Context) error {
	began := time.Now()
	// 1. Gate: from here on every new request fails with ErrClosed.
	if o.stats.gate.Or(closedBit)&^closedBit == 0 {
		o.signalDrained()
	}
	// A request reading its body whose context ends is finished then, so that the drain does
	// not wait for bodies their callers abandoned.
	o.stopping.Store(true)
	close(o.gateClosed)
	for _, r := range o.requests.visit() {
		if r.bodyOut.Load() && !r.stream { // a 101 stream lives until it is closed
			r.watch()
		}
	}
	// 2. Drain, bounded by ctx and DrainTimeout.
	if d := o.cfg.DrainTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var err error
	var cut int64
	select {
	case <-o.drained:
	case <-ctx.Done():
		select {
		case <-o.drained:
		default:
			cut = o.stats.gate.Load() &^ closedBit
			o.stats.cut.Add(cut)
			err = fmt.Errorf("httpfx: stop cut %d in-flight request(s) after waiting %v for them: %w",
				cut, time.Since(began).Round(time.Millisecond), ctx.Err())
		}
	}
	// 3. Close the owned transport's idle connections, through the pointer httpfx holds.
	o.transport.CloseIdleConnections()
	// 4. Past the bound, cut what is left, so that nothing outlives stop and cut requests fail
	// instead of hanging: bodies still open (their callers may never close them, and net/http
	// holds a connection and two goroutines for each) and round trips still running. Then
	// close every connection left and refuse new dials.
	var left []*request
	if err != nil {
		left = o.requests.close()
		for _, r := range left {
			r.cut.Store(true) // first: the failures that closing their connections causes say why
		}
	}
	closed := o.conns.closeAll()
	if err != nil {
		for _, r := range left {
			r.cutNow()
		}
		// Every request left is ending now: wait until the last has told the observers.
		select {
		case <-o.drained:
		case <-time.After(time.Second):
		}
	}
	// After the dials: none can start a refresh now. A lookup that ignores its cancellation
	// for a second is left to finish on its own, and said.
	if stuck := o.dns.Close(time.Second); stuck > 0 {
		err = errors.Join(err, fmt.Errorf("httpfx: stop: %d DNS lookup(s) of the Resolver still running a second after their context was cancelled: left to finish on their own", stuck))
	}
	o.conns.quiet()
	// 5. One summary line.
	s := o.stats.Snapshot()
	o.log.Info("httpfx client stopped",
		zap.Int64("requests", s.Requests),
		zap.Int64("failed", s.Failed),
		zap.Int64("rejected", s.Rejected),
		zap.Int64("conns_opened", s.ConnsOpened),
		zap.Float64("reuse_ratio", s.ReuseRatio()),
		zap.Int64("cut", cut),
		zap.Int("conns_force_closed", closed),
		zap.Int64("replayed", s.Replayed),
		zap.Int64("retries", s.Retries),
		zap.Int64("retries_refused_by_budget", s.BudgetRefused),
		zap.Int64("tls_handshakes_full", s.HandshakesFull),
		zap.Int64("tls_handshakes_resumed", s.HandshakesResumed),
		zap.Any("conns_retired", s.ConnsRetired),
		zap.Int("idle_bounds_learned", len(s.IdleBounds)),
		zap.Duration("drain", time.Since(began)),
	)
	return err
}
