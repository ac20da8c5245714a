package httpfx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"

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

	// Resolver looks up the hosts the owned transport dials, through the DNS cache (see
	// Config.DNSTTL). Nil means net.DefaultResolver, which httpfx only reads.
	Resolver Resolver `optional:"true"`

	// Observers receive the events of the client's requests and the transport's connections
	// (see Observer). Nil means none, and no cost per request. In an fx graph they are the
	// value group "httpfx.observers".
	Observers []Observer `group:"httpfx.observers"`
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
// called without fx; Module calls the same steps with decoration points in between. The
// client's first request with a deadline starts the goroutine that enforces deadlines; the
// stop sequence (the hook, or Shutdown) stops it, so a client that is used must be stopped.
func New(p Params) (Result, error) {
	o, err := newOwner(p.Config, p.Logger, p.Resolver)
	if err != nil {
		return Result{}, err
	}
	o.setObservers(p.Observers)
	c := o.newClient(o.transport, o.transport)
	if p.Lifecycle != nil {
		p.Lifecycle.Append(o.hook())
	}
	return Result{Transport: o.transport, RoundTripper: o.transport, Client: c, Stats: o.stats}, nil
}

// Shutdown runs the stop sequence of a client that New, the Module or Upstream built (for an
// upstream client, that of the module it shares): it refuses new requests with ErrClosed, waits for in-flight requests and their response bodies (bounded by
// ctx and Config.DrainTimeout), closes the owned transport's connections, stops the goroutine
// that enforces the client's deadlines, and returns an
// error wrapping ctx's error and saying how many requests it cut if the bound expired. It is
// the same as the OnStop hook and only the first call, of either, does the work; later calls
// return its result. For a client httpfx did not build it returns an error and does nothing.
func Shutdown(ctx context.Context, c *http.Client) error {
	if o := ownerOf(c); o != nil {
		return o.stop(ctx)
	}
	return errors.New("httpfx: shutdown: the client was not built by httpfx, which closes only what it created")
}

// CloseIdleConnections closes the idle connections of the transport httpfx owns, the pool
// that c (a client New, the Module or Upstream built) shares with every other client of its
// module: the app owner's deliberate flush, for example after a network change. Connections
// in use are left alone. A consumer's c.CloseIdleConnections() does not do this: it is
// ignored and counted (the README's ownership rule 5). For a client httpfx did not build it
// returns an error and does nothing. It is safe for concurrent use.
func CloseIdleConnections(c *http.Client) error {
	if o := ownerOf(c); o != nil {
		o.transport.CloseIdleConnections()
		return nil
	}
	return errors.New("httpfx: close idle connections: the client was not built by httpfx, which closes only what it created")
}

// ownerOf returns the owner of a client httpfx built, or nil.
func ownerOf(c *http.Client) *owner {
	if c != nil {
		switch t := c.Transport.(type) {
		case *tracker:
			return t.o
		case *upstream:
			return t.t.o
		}
	}
	return nil
}

// newTransport builds the tuned transport from cfg, and what resolve derived from it. It
// starts from a zero Transport, not a clone of http.DefaultTransport, whose settings cfg
// covers anyway: whatever another package of the process changed on the default transport
// (a DialTLSContext, proxy headers) must not reach the shared pool.
func newTransport(cfg Config, r resolved, dial dialFunc) *http.Transport {
	t := &http.Transport{}
	t.DialContext = dial // the DNS cache's: DialTimeout, KeepAlive, Happy Eyeballs
	t.Proxy = r.proxy
	t.TLSClientConfig = r.tls
	t.TLSHandshakeTimeout = cfg.TLSHandshakeTimeout
	// ResponseHeaderTimeout is the tracker's to enforce (sweeper.go): net/http's would arm a
	// timer per request.
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
	} else {
		t.HTTP2 = &http.HTTP2Config{
			SendPingTimeout:  cfg.HTTP2SendPingTimeout,
			PingTimeout:      cfg.HTTP2PingTimeout,
			WriteByteTimeout: cfg.HTTP2WriteByteTimeout,
		}
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
		o.conns.health, o.conns.dns = o.health, o.dns
		// Note which servers ask for a client certificate when none is configured, so that
		// the error of a mutual-TLS failure can say why. Installed now, after decorators.
		if h := new(certHint); h.install(t.TLSClientConfig) {
			o.hint = h
		}
	}
	if t != o.transport {
		o.health = nil // a caller's transport: httpfx leaves its connections alone
	} else if p := t.Protocols; p != nil && p.UnencryptedHTTP2() {
		o.health.h2c = true
	}
	o.inUse = t
	o.nextType = fmt.Sprintf("%T", rt)
	o.tracker = newTracker(o, rt)
	o.client = &http.Client{Transport: o.tracker, CheckRedirect: redirectPolicy(nil)}
	return o.client
}
