package httpfx

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// owner holds what httpfx built and owns for one client: the transport, the client, their
// counters and connections, and the stop state.
type owner struct {
	cfg        Config
	log        *zap.Logger
	stats      *Stats
	conns      connSet
	transport  *http.Transport // the transport httpfx built: the only one it closes
	clock      *clock
	traceKey   any   // httptrace's context key, which calls answer (call.go); nil if unknown
	timeoutErr error // the error of a request past Config.Timeout

	headerTimeoutErr error // the error of a request past Config.ResponseHeaderTimeout

	// Set while the graph is built, before start; read-only afterwards.
	client    *http.Client    // the client httpfx built, nil until built
	tracker   *tracker        // client's round tripper, shared by the upstream clients
	inUse     *http.Transport // the *http.Transport the client was built over
	inGraph   *http.Client    // the *http.Client the graph hands out (Module only)
	nextType  string          // the type of the round tripper under the client, for the start log
	upstreams []*upstream     // the upstream clients built

	hint     *certHint   // explains mutual-TLS failures; nil if a client certificate is configured
	health   *health     // retires connections before they can lose a request; nil if the transport is not the owned one
	dns      *dnsCache   // the owned transport's resolver and dialer
	calls    callList    // requests in flight
	sweep    sweeper     // enforces their deadlines
	stopping atomic.Bool // stop has begun: new bodies watch their context
	gate     *h2gate     // nil if HTTP/2 is off
	obs      *observers  // nil unless observed; set before use

	drained   chan struct{} // closed once the gate is closed and nothing is in flight
	drainOnce sync.Once
	stopOnce  sync.Once
	stopErr   error
}

func newOwner(cfg Config, log *zap.Logger, res Resolver) (*owner, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	clk := &clock{epoch: time.Now()}
	o := &owner{
		cfg:        cfg,
		log:        log.Named("httpfx"),
		stats:      new(Stats),
		dns:        newDNSCache(cfg, res, clk),
		clock:      clk,
		traceKey:   probeTraceKey(),
		timeoutErr: &timeoutError{what: "Config.Timeout", d: cfg.Timeout},
		headerTimeoutErr: &timeoutError{what: "Config.ResponseHeaderTimeout", d: cfg.ResponseHeaderTimeout,
			waiting: "for the response headers"},
		drained: make(chan struct{}),
	}
	o.health = newHealth(cfg, o.stats, clk)
	o.transport = newTransport(cfg, r, o.dns.dial)
	o.conns.stats = o.stats
	o.dns.onGone = o.conns.markGone
	o.stats.bounds = o.health.idleBounds
	o.calls.init()
	o.sweep.init(o)
	o.stats.reap = func() { o.calls.reap(-1) }
	if !cfg.DisableHTTP2 {
		o.gate = new(h2gate)
		o.conns.onLast = o.gate.forget
	}
	return o, nil
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

// ignoreCloseIdle counts a consumer's CloseIdleConnections call, which must not empty the
// shared pool, and logs the first one.
func (o *owner) ignoreCloseIdle() {
	if o.stats.closeIdleIgnored.Add(1) == 1 {
		o.log.Info("httpfx ignored CloseIdleConnections on a shared client: the pool is shared by every component; the app owner flushes it with httpfx.CloseIdleConnections (further calls are only counted, in Stats)")
	}
}

func (o *owner) signalDrained() { o.drainOnce.Do(func() { close(o.drained) }) }

// timeoutError is the error of a request past a timeout of httpfx. Like http.Client's own
// timeout error, it is a net.Error whose Timeout reports true, and it wraps
// context.DeadlineExceeded.
type timeoutError struct {
	what    string // the setting that expired
	d       time.Duration
	waiting string // what the request was waiting for, if the setting bounds one wait
}

func (e *timeoutError) Error() string {
	if e.waiting != "" {
		return fmt.Sprintf("httpfx: request exceeded %s (%v) waiting %s", e.what, e.d, e.waiting)
	}
	return fmt.Sprintf("httpfx: request exceeded %s (%v)", e.what, e.d)
}
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() error   { return context.DeadlineExceeded }
