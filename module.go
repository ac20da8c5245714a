// Package httpfx gives an Uber fx application one shared, tuned and drained HTTP client.
//
// A service that builds a new http.Client per call pays a TCP and TLS handshake on every
// call and leaves TIME_WAIT sockets behind; one that shares http.DefaultClient still churns
// connections, because the default transport keeps only 2 idle connections per host. Add
// Module to an app and take *http.Client:
//
//	fx.New(httpfx.Module, fx.Invoke(func(c *http.Client) { ... }))
//
// The client sends through a transport tuned by Config (DefaultConfig unless replaced). At
// stop, httpfx refuses new requests with ErrClosed, waits for the requests in flight,
// including their response bodies, closes its connections and, past the drain bound, cuts
// what is left and says how many. It closes only what it built: a client, transport or round
// tripper swapped in with fx.Decorate is never closed by httpfx. Stats counts requests and
// connections, so that reuse can be seen.
//
// Without fx, New builds the same client and Shutdown stops it.
package httpfx

import (
	"fmt"
	"net/http"

	"go.uber.org/fx"
	"go.uber.org/zap"
)

// Module provides Config (DefaultConfig), *http.Transport (owned), http.RoundTripper (the
// transport), *http.Client (owned, built over the round tripper) and *Stats, each a separate
// step so that fx.Decorate can adjust or replace any of them, and registers the start and stop
// hooks before any of them is built, so that whatever depends on them stops first. It takes a
// *zap.Logger and a Resolver if the graph has them and never provides either, and the
// Observers of the value group "httpfx.observers", if any. A Config that fails Validate makes
// fx.New fail with the error.
var Module = fx.Module("httpfx",
	fx.Provide(DefaultConfig),
	fx.Provide(fx.Private, newModuleOwner),
	fx.Provide(
		func(o *owner) *http.Transport { return o.transport },
		func(t *http.Transport) http.RoundTripper { return t },
		newModuleClient,
		func(o *owner) *Stats { return o.stats },
	),
	fx.Invoke(recordGraphClient),
)

// ownerParams are the inputs of the module's owner.
type ownerParams struct {
	fx.In

	Config    Config
	Logger    *zap.Logger `optional:"true"`
	Resolver  Resolver    `optional:"true"`
	Observers []Observer  `group:"httpfx.observers"`
}

// newModuleOwner builds what httpfx owns and registers the hooks here, where the first piece
// of it is built: everything that depends on the client, the transport, the round tripper or
// an upstream client is built after, so fx stops it before httpfx drains.
func newModuleOwner(lc fx.Lifecycle, p ownerParams) (*owner, error) {
	o, err := newOwner(p.Config, p.Logger, p.Resolver, p.Observers)
	if err != nil {
		return nil, err
	}
	lc.Append(o.hook())
	return o, nil
}

// clientResult is what newModuleClient provides: the client, and its round tripper for
// Upstream.
type clientResult struct {
	fx.Out

	Client       *http.Client
	RoundTripper *roundTripper
}

// newModuleClient builds the owned client over the (possibly decorated) round tripper.
func newModuleClient(o *owner, t *http.Transport, rt http.RoundTripper) clientResult {
	c := o.newClient(t, rt)
	return clientResult{Client: c, RoundTripper: o.rt}
}

// recordGraphClient records the *http.Client consumers get, so that start can say if a
// caller-supplied one is in use. It also makes fx.New build the client, and so fail on a bad
// Config, even if nothing else asks for it.
func recordGraphClient(o *owner, c *http.Client) { o.inGraph = c }

// Upstream declares a *http.Client named name (take it with the tag `name:"<name>"`) for
// one upstream service. It sends through the module's shared round tripper, so it shares the
// connection pool, the drain at stop, ErrClosed after stop and the counters, and it adds
// cfg's base URL, headers, timeout and connection limit. An entry for name in
// Config.Upstreams overrides cfg's fields that it sets. An invalid name or configuration
// fails fx.New with an error naming the upstream and the field, whether or not a component
// takes the client yet. Use it beside Module.
func Upstream(name string, cfg UpstreamConfig) fx.Option {
	if !upstreamName.MatchString(name) {
		return fx.Error(fmt.Errorf("httpfx: upstream name %q: want lower-case letters, digits, '-' and single '_', starting with a letter", name))
	}
	if err := cfg.validate(name, false); err != nil { // BaseURL may come from Config.Upstreams
		return fx.Error(err)
	}
	tag := `name:"` + name + `"`
	return fx.Options(
		fx.Provide(fx.Annotate(
			func(t *roundTripper) (*http.Client, error) { return t.o.newUpstream(name, cfg) },
			fx.ResultTags(tag),
		)),
		// Build the client with the graph, so that a bad merged configuration fails fx.New
		// even before a component takes the client.
		fx.Invoke(fx.Annotate(func(*http.Client) {}, fx.ParamTags(tag))),
	)
}
