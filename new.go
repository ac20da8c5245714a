package httpfx

import (
	"context"
	"errors"
	"net/http"
	"net/netip"

	"go.uber.org/fx"
	"go.uber.org/zap"
)

// Resolver looks up the IP addresses of a host for the owned transport's dials, through the
// DNS cache (see Config.DNSTTL). *net.Resolver implements it; tests supply their own to change
// an answer. network is "ip", "ip4" or "ip6". It must be safe for concurrent use and return
// once ctx ends: stop waits a second for a lookup it cancelled, then leaves it running and
// says so in its error.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

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

	// Transport is the tuned transport httpfx built and owns. Its ResponseHeaderTimeout is
	// Config.ResponseHeaderTimeout, so that anything built on it (a reverse proxy) has the bound.
	Transport *http.Transport

	// RoundTripper is what Client sends through: the Transport.
	RoundTripper http.RoundTripper

	// Client is the one shared client. Its Timeout field is zero: httpfx bounds each request
	// by Config.Timeout itself, with a deadline on the request's context. Do not set it.
	Client *http.Client

	// Stats are the live counters of Client and Transport.
	Stats *Stats
}

// New builds the owned transport and client from p.Config and, if p.Lifecycle is set,
// registers the hooks that log the settings at start and run the stop sequence (gate, drain,
// close) at stop; without a Lifecycle the client is started at once. It returns an error
// naming the field if p.Config is invalid. It can be called without fx; Module calls the same
// steps with decoration points in between. A client that is used must be stopped, by the
// hook or by Shutdown, so that its connections and background DNS refreshes end.
func New(p Params) (Result, error) {
	o, err := newOwner(p.Config, p.Logger, p.Resolver, p.Observers)
	if err != nil {
		return Result{}, err
	}
	c := o.newClient(o.transport, o.transport)
	if p.Lifecycle != nil {
		p.Lifecycle.Append(o.hook())
	} else {
		o.dns.Start()
	}
	return Result{Transport: o.transport, RoundTripper: o.transport, Client: c, Stats: o.stats}, nil
}

// Shutdown runs the stop sequence of a client that New, the Module or Upstream built (for an
// upstream client, that of the module it shares): it refuses new requests with ErrClosed,
// waits for in-flight requests and their response bodies (bounded by ctx and
// Config.DrainTimeout), closes the owned transport's connections, and returns an error
// wrapping ctx's error and saying how many requests it cut if the bound expired. It is the
// same as the OnStop hook and only the first call, of either, does the work; later calls
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
		case *roundTripper:
			return t.o
		case *upstream:
			return t.t.o
		}
	}
	return nil
}
