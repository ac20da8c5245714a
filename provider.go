package httpfx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"
)

// Params are the inputs of New. In an fx app the Module fills them from the graph.
type Params struct {
	fx.In

	// Lifecycle receives the start and stop hooks. Nil means none are registered: the caller
	// then stops the client with Shutdown.
	Lifecycle fx.Lifecycle

	// Config configures the client; New validates it.
	Config Config

	// Logger is used, named "httpfx", if set. Nil means no logging.
	Logger *zap.Logger `optional:"true"`
}

// Result is what New builds. httpfx owns the Transport and the Client and closes them at stop.
// All four are safe for concurrent use.
type Result struct {
	fx.Out

	// Transport is the tuned transport httpfx built and owns.
	Transport *http.Transport

	// RoundTripper is what Client sends through: the Transport.
	RoundTripper http.RoundTripper

	// Client is the one shared client. Its Timeout field is zero because httpfx enforces
	// Config.Timeout itself; do not set it.
	Client *http.Client

	// Stats are the live counters of Client and Transport.
	Stats *Stats
}

// New builds the owned transport and client from p.Config and, if p.Lifecycle is set,
// registers the hooks that log the settings at start and run the stop sequence (gate, drain,
// close) at stop. It returns an error naming the field if p.Config is invalid. It can be
// called without fx; Module calls the same steps with decoration points in between.
func New(p Params) (Result, error) {
	o, err := newOwner(p.Config, p.Logger)
	if err != nil {
		return Result{}, err
	}
	c := o.newClient(o.transport, o.transport)
	if p.Lifecycle != nil {
		p.Lifecycle.Append(o.hook())
	}
	return Result{Transport: o.transport, RoundTripper: o.transport, Client: c, Stats: o.stats}, nil
}

// Shutdown runs the stop sequence of a client that New, the Module or Upstream built (for an
// upstream client, that of the module it shares): it refuses new
// requests with ErrClosed, waits for in-flight requests and their response bodies (bounded by
// ctx and Config.DrainTimeout), closes the owned transport's connections, and returns an
// error wrapping ctx's error and saying how many requests it cut if the bound expired. It is
// the same as the OnStop hook and only the first call, of either, does the work; later calls
// return its result. For a client httpfx did not build it returns an error and does nothing.
func Shutdown(ctx context.Context, c *http.Client) error {
	if c != nil {
		switch t := c.Transport.(type) {
		case *tracker:
			return t.o.stop(ctx)
		case *upstream:
			return t.t.o.stop(ctx)
		}
	}
	return errors.New("httpfx: shutdown: the client was not built by httpfx, which closes only what it created")
}

// owner holds what httpfx built and owns for one client: the transport, the client, their
// counters and connections, and the stop state.
type owner struct {
	cfg        Config
	log        *zap.Logger
	stats      *Stats
	conns      connSet
	transport  *http.Transport // the transport httpfx built: the only one it closes
	timeoutErr error           // the cause of a request's context when Config.Timeout expires

	// Set while the graph is built, before start; read-only afterwards.
	client   *http.Client    // the client httpfx built, nil until built
	tracker  *tracker        // client's round tripper, shared by the upstream clients
	inUse    *http.Transport // the *http.Transport the client was built over
	inGraph  *http.Client    // the *http.Client the graph hands out (Module only)
	nextType string          // the type of the round tripper under the client, for the start log

	certAsked atomic.Bool // an upstream asked for a client certificate and none is configured
	bodies    bodyList    // response bodies in flight
	stopping  atomic.Bool // stop has begun: new bodies watch their context
	gate      *h2gate     // nil if HTTP/2 is off

	drained   chan struct{} // closed once the gate is closed and nothing is in flight
	drainOnce sync.Once
	stopOnce  sync.Once
	stopErr   error
}

func newOwner(cfg Config, log *zap.Logger) (*owner, error) {
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
		transport:  newTransport(cfg, r),
		timeoutErr: &timeoutError{what: "Config.Timeout", d: cfg.Timeout},
		drained:    make(chan struct{}),
	}
	o.conns.stats = o.stats
	o.bodies.init()
	o.stats.reap = func() { o.bodies.reap(-1) }
	if !cfg.DisableHTTP2 {
		o.gate = new(h2gate)
		o.conns.onLast = o.gate.forget
	}
	return o, nil
}

// newTransport builds the tuned transport: a clone of http.DefaultTransport's settings (never
// the default transport itself) with cfg, and what resolve derived from it, applied.
func newTransport(cfg Config, r resolved) *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{} // http.DefaultTransport was replaced; cfg sets what matters below.
	}
	t.DialContext = (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: cfg.KeepAlive}).DialContext
	t.Proxy = r.proxy
	t.TLSClientConfig = r.tls
	t.TLSHandshakeTimeout = cfg.TLSHandshakeTimeout
	t.ResponseHeaderTimeout = cfg.ResponseHeaderTimeout
	t.ExpectContinueTimeout = cfg.ExpectContinueTimeout
	t.IdleConnTimeout = cfg.IdleConnTimeout
	t.MaxIdleConns = cfg.MaxIdleConns
	t.MaxIdleConnsPerHost = cfg.MaxIdleConnsPerHost
	t.MaxConnsPerHost = cfg.MaxConnsPerHost
	t.MaxResponseHeaderBytes = cfg.MaxResponseHeaderBytes
	t.DisableCompression = cfg.DisableCompression
	t.DisableKeepAlives = false
	t.ForceAttemptHTTP2 = !cfg.DisableHTTP2
	if cfg.DisableHTTP2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // net/http's documented switch
	}
	return t
}

// newClient builds the owned client over rt. t is the *http.Transport in the graph: if it is
// the owned one, its dials are counted and recorded from now on; if the caller swapped in
// another, httpfx leaves it untouched.
func (o *owner) newClient(t *http.Transport, rt http.RoundTripper) *http.Client {
	if t == o.transport {
		dial := t.DialContext
		if dial == nil {
			dial = (&net.Dialer{}).DialContext
		}
		t.DialContext = o.conns.wrap(dial)
		// Note a server's request for a client certificate when none is configured, so that
		// the error of a mutual-TLS failure can say why. Installed now, after decorators,
		// because crypto/tls ignores Certificates once GetClientCertificate is set.
		if tc := t.TLSClientConfig; tc != nil && len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				o.certAsked.Store(true)
				return new(tls.Certificate), nil // none, as without this hook
			}
		}
	}
	o.inUse = t
	o.nextType = fmt.Sprintf("%T", rt)
	o.tracker = &tracker{next: rt, o: o}
	o.client = &http.Client{Transport: o.tracker, CheckRedirect: redirectPolicy(nil)}
	return o.client
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

// finish ends an admitted request: it stops the request's timeout, if any, and counts the
// request out of flight, and out of its upstream's if up is set.
func (o *owner) finish(cancel context.CancelFunc, up *upstream, failed bool) {
	if cancel != nil {
		cancel()
	}
	if up != nil {
		up.done(failed)
	}
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

// timeoutError is the cause of a request's context when a timeout of httpfx expires. Like
// http.Client's own timeout error, it is a net.Error whose Timeout reports true, and it wraps
// context.DeadlineExceeded.
type timeoutError struct {
	what string // the setting that expired
	d    time.Duration
}

func (e *timeoutError) Error() string {
	return fmt.Sprintf("httpfx: request exceeded %s (%v)", e.what, e.d)
}
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() error   { return context.DeadlineExceeded }

// maxRedirects is how many redirects a client of httpfx follows, as net/http's default.
const maxRedirects = 10

// credentialHeaders are dropped from a redirect that leaves the first request's origin.
var credentialHeaders = [...]string{"Authorization", "Www-Authenticate", "Cookie", "Cookie2"}

// redirectPolicy returns the CheckRedirect of a client of httpfx: follow up to 10 redirects,
// as net/http does, and drop credential headers from a redirect to another origin. net/http
// keeps them for the same host on another port or scheme (https to http included) and for
// subdomains; httpfx keeps them only for the same host and port, or the same host moving
// from http to https. Relative URLs resolve against base (nil for absolute-only clients).
func redirectPolicy(base *url.URL) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("httpfx: stopped after %d redirects", maxRedirects)
		}
		from, to := via[0].URL, req.URL
		if base != nil {
			from, to = base.ResolveReference(from), base.ResolveReference(to)
		}
		if !keepsCredentials(from, to) {
			for _, h := range credentialHeaders {
				req.Header.Del(h)
			}
		}
		return nil
	}
}

// keepsCredentials reports whether a redirect from one URL to another stays with the same
// party: the same host and port, or the same host upgraded from http to https.
func keepsCredentials(from, to *url.URL) bool {
	if !strings.EqualFold(from.Hostname(), to.Hostname()) {
		return false
	}
	switch {
	case from.Scheme == to.Scheme:
		return portOf(from) == portOf(to)
	case from.Scheme == "http" && to.Scheme == "https":
		return from.Port() == "" && to.Port() == ""
	default:
		return false
	}
}
