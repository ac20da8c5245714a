// Package httpfxtest tests the components of an fx app that use httpfx. It routes the
// requests of the app's shared client and upstream clients to test handlers served by real
// loopback servers, records what each server receives, and when the test ends fails it for
// every response body left open, naming the line that sent the request:
//
//	env := httpfxtest.New(t)
//	payments := env.Upstream("payments", handler)
//	app := fxtest.New(t, env.Module(httpfx.Module, httpfx.Upstream("payments", cfg), components))
//	defer app.RequireStart().RequireStop()
//
// Requests keep every HTTP semantic of production (TLS with HTTP/2, headers, status, streaming
// bodies, timeouts, the drain and ErrClosed at stop) because they go through the app's own
// transport to real servers; only the address dialled changes. The stack of each request is
// captured in this test mode only: an app built without Module pays nothing.
package httpfxtest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
)

// Env routes the requests of the httpfx clients of an app built with its Module to test
// servers, and checks when the test ends that the app left nothing behind. New creates it for
// one test; it owns its servers and closes them when the test ends. It is safe for concurrent
// use. The zero Env is not usable.
type Env struct {
	t     testing.TB
	certs *certs

	mu       sync.Mutex
	sealed   bool               // Module was called: no more routes
	names    map[string]*Server // routes by upstream name
	hosts    map[string]*Server // routes by "host" or "host:port", lower case
	servers  []*Server          // every server, to close at the end
	addrs    map[string]dest    // where each dialled "host:port" goes, as its requests set it
	secrets  map[string]bool    // canonical names of headers an upstream configuration sets
	bodies   map[*body]struct{} // response bodies not yet finished by their caller
	seq      int64              // requests seen, to report bodies in order
	problems []string           // requests refused, reported at the end
	conns    map[*conn]struct{} // connections dialled through the env and still open
	apps     []*app             // the apps built with Module
	lastConn chan struct{}      // closed when conns empties, while finish waits
	finished bool               // finish ran: nothing more to record
	drain    time.Duration      // the bound of the apps' DrainTimeout
}

// defaultDrain is the longest Config.DrainTimeout of an app built with Env.Module, unless
// SetDrainTimeout changes it: long enough for a component to finish a response it is reading
// when the app stops, short enough that a body never closed fails the test within a second.
const defaultDrain = time.Second

// SetDrainTimeout sets the longest Config.DrainTimeout of the apps built with Module from now
// on; zero means the default, one second, which is long enough for a component to finish a
// response it is reading when the app stops, and short enough that a body never closed fails
// the test at once. Call it before Module.
func (e *Env) SetDrainTimeout(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d <= 0 {
		d = defaultDrain
	}
	e.drain = d
}

// dest is where requests to one dialled address go: a test server, or straight to a loopback
// address if s is nil.
type dest struct {
	s   *Server
	tls bool   // the requests are https
	via string // the route, for errors
}

// New returns an Env for the test t and registers, with t.Cleanup, the checks that run when
// the test ends: every response body was closed or read to EOF, every request had a route,
// every app started with Module was stopped (else it stops the app's client, so that no
// goroutine of httpfx is left), and no connection of the app's transport is still open (so no
// net/http goroutine is left). Then it closes the Env's servers. Call it from the test's
// goroutine.
func New(t testing.TB) *Env {
	t.Helper()
	c, err := newCerts()
	if err != nil {
		t.Fatalf("httpfxtest: %v", err)
	}
	e := &Env{
		t:       t,
		certs:   c,
		names:   make(map[string]*Server),
		hosts:   make(map[string]*Server),
		addrs:   make(map[string]dest),
		secrets: make(map[string]bool),
		bodies:  make(map[*body]struct{}),
		conns:   make(map[*conn]struct{}),
		drain:   defaultDrain,
	}
	t.Cleanup(e.finish)
	return e
}

// Upstream routes every request of the upstream client named name (see httpfx.Upstream) to
// h, served by a new Server, whatever the client's base URL: the handler sees the URL, Host
// and headers the client sends in production, over TLS and HTTP/2 if the URL is https. The
// component gets a copy of the named client that marks its requests; httpfx.Shutdown refuses
// that copy, so stop the app instead. Call it before Module.
func (e *Env) Upstream(name string, h http.Handler) *Server {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.sealed:
		e.t.Fatalf("httpfxtest: Upstream(%q) after Module: declare every route before Module", name)
	case name == "":
		e.t.Fatalf("httpfxtest: Upstream: empty name")
	case h == nil:
		e.t.Fatalf("httpfxtest: Upstream(%q): nil handler", name)
	case e.names[name] != nil:
		e.t.Fatalf("httpfxtest: Upstream(%q) routed twice", name)
	}
	s := e.newServer(h)
	e.names[name] = s
	return s
}

// Host routes every request to host, which is "name" (any port) or "name:port", from any
// client of the app, to h, served by a new Server: the handler sees the request's URL, Host
// and headers, over TLS and HTTP/2 if the URL is https. A route by Upstream wins for the
// requests of that client. Call it before Module.
func (e *Env) Host(host string, h http.Handler) *Server {
	e.t.Helper()
	key, err := hostKey(host)
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.sealed:
		e.t.Fatalf("httpfxtest: Host(%q) after Module: declare every route before Module", host)
	case err != nil:
		e.t.Fatalf("httpfxtest: Host(%q): %v", host, err)
	case h == nil:
		e.t.Fatalf("httpfxtest: Host(%q): nil handler", host)
	case e.hosts[key] != nil:
		e.t.Fatalf("httpfxtest: Host(%q) routed twice", host)
	}
	s := e.newServer(h)
	e.hosts[key] = s
	return s
}

// Module returns an fx module that holds opts, which must include httpfx.Module and the
// components under test, and routes the requests of their httpfx clients: it adjusts the
// owned *http.Transport in place (dials, trusted roots, no proxy for routed hosts) and wraps
// the http.RoundTripper to track response bodies. Its decorations sit between the app's own:
// those given beside Module apply before it, those in opts after it. The upstream clients
// routed by name are decorated beside Module, so the test can take them too. fx.New fails if
// httpfx.Module is not in opts or a routed upstream has no client. It bounds the app's
// Config.DrainTimeout (see SetDrainTimeout; a decoration in opts may raise it again), so that a
// body left open holds the app's stop briefly before the test fails.
func (e *Env) Module(opts ...fx.Option) fx.Option {
	e.mu.Lock()
	e.sealed = true
	drain := e.drain
	names := make([]string, 0, len(e.names))
	for n := range e.names {
		names = append(names, n)
	}
	e.mu.Unlock()
	slices.Sort(names)

	var adjusted, wrapped bool // set while fx.New builds the graph, on its goroutine
	own := []fx.Option{
		fx.Decorate(func(c httpfx.Config) httpfx.Config {
			if c.DrainTimeout == 0 || c.DrainTimeout > drain {
				c.DrainTimeout = drain // a leaked body fails the test fast
			}
			return c
		}),
		fx.Decorate(func(t *http.Transport) *http.Transport {
			adjusted = true
			e.adjust(t)
			return t
		}),
		fx.Decorate(func(rt http.RoundTripper) http.RoundTripper {
			wrapped = true
			return &recorder{env: e, next: rt}
		}),
		fx.Invoke(func(c httpfx.Config) { e.learnConfig(c) }),
		fx.Invoke(func(lc fx.Lifecycle, c *http.Client, stats *httpfx.Stats) error {
			if !adjusted || !wrapped {
				return errors.New("httpfxtest: httpfx.Module must be among the options given to Env.Module, so that its requests can be routed")
			}
			a := &app{client: c, stats: stats} // httpfx's own client: the app's decorations are below
			lc.Append(fx.Hook{
				OnStart: func(context.Context) error { a.started.Store(true); return nil },
				OnStop:  func(context.Context) error { a.stopped.Store(true); return nil },
			})
			e.mu.Lock()
			e.apps = append(e.apps, a)
			e.mu.Unlock()
			return nil
		}),
	}
	// The upstream clients routed by name are decorated where Module is placed, so that the
	// test can take them too.
	var named []fx.Option
	for _, name := range names {
		tag := `name:"` + name + `"`
		named = append(named,
			fx.Decorate(fx.Annotate(func(c *http.Client) *http.Client { return tagClient(c, name) },
				fx.ParamTags(`name:"`+name+`" optional:"true"`), fx.ResultTags(tag))),
			fx.Invoke(fx.Annotate(func(c *http.Client) error {
				if c == nil {
					return fmt.Errorf("httpfxtest: upstream %q is routed but the app has no client of that name: add httpfx.Upstream(%q, ...) to Env.Module's options", name, name)
				}
				return nil
			}, fx.ParamTags(`name:"`+name+`" optional:"true"`))),
		)
	}
	return fx.Options(append(named, fx.Module("httpfxtest", append(own, fx.Module("app", opts...))...))...)
}

// finish runs the checks of the end of the test, then closes what is left and the servers.
func (e *Env) finish() {
	e.t.Helper()
	e.mu.Lock()
	e.finished = true
	open := make([]*body, 0, len(e.bodies))
	for b := range e.bodies {
		open = append(open, b)
	}
	problems := e.problems
	e.mu.Unlock()
	slices.SortFunc(open, func(a, b *body) int { return cmp.Compare(a.seq, b.seq) })
	for _, b := range open {
		e.t.Errorf("%s", b.report())
	}
	for _, p := range problems {
		e.t.Errorf("%s", p)
	}
	// An app started and never stopped still runs httpfx's goroutines: say so, and stop its
	// client now, at once.
	e.mu.Lock()
	apps := e.apps
	e.mu.Unlock()
	for _, a := range apps {
		if a.started.Load() && !a.stopped.Load() {
			e.t.Errorf("httpfxtest: the app was started and never stopped: stop it before the test ends (defer app.RequireStart().RequireStop()); httpfxtest stopped its HTTP client")
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		httpfx.Shutdown(ctx, a.client) //nolint:errcheck // a stopped app's client returns its stop's result
	}
	// A stopped app has closed its connections already; a connection a transport goroutine is
	// closing right now gets a moment.
	if n := e.waitConns(2 * time.Second); n > 0 {
		e.t.Errorf("httpfxtest: the app's transport still holds %d connection(s), each with net/http goroutines, at the end of the test: stop the app before the test ends (defer app.RequireStart().RequireStop())", n)
	}
	e.closeConns()
	for _, s := range e.servers {
		s.close()
	}
}

// route decides where req goes and records it for the dial, or returns why it cannot go.
// tg is set if an upstream client routed by name sent it.
func (e *Env) route(req *http.Request, tg *tag) error {
	host, port := hostPort(req.URL)
	addr := net.JoinHostPort(host, port)
	d := dest{tls: req.URL.Scheme == "https"}
	e.mu.Lock()
	defer e.mu.Unlock()
	if tg != nil {
		d.s, d.via = e.names[tg.name], fmt.Sprintf("upstream %q", tg.name)
		for k := range req.Header {
			if _, pre := tg.header[k]; !pre && k != "User-Agent" {
				e.secrets[k] = true // set on the way, by the upstream's configuration
			}
		}
	}
	if d.s == nil {
		for _, key := range []string{addr, host} {
			if s := e.hosts[key]; s != nil {
				d.s, d.via = s, fmt.Sprintf("host %q", key)
				break
			}
		}
	}
	if d.s == nil {
		if !isLoopback(host) {
			return e.refuse(fmt.Sprintf("httpfxtest: no route for %s %s: route its upstream with Env.Upstream or its host with Env.Host (tests reach only loopback)",
				req.Method, safeURL(req.URL)))
		}
		d.via = "loopback"
	}
	if prev, ok := e.addrs[addr]; ok && (prev.s != d.s || d.s != nil && prev.tls != d.tls) {
		return e.refuse(fmt.Sprintf("httpfxtest: %s %s: %s is routed two ways (%s over %s, and %s over %s): give it one route",
			req.Method, safeURL(req.URL), addr, prev.via, scheme(prev.tls), d.via, scheme(d.tls)))
	}
	e.addrs[addr] = d
	return nil
}

// refuse records a refused request for the end of the test and returns its error. e.mu is held.
func (e *Env) refuse(msg string) error {
	if !e.finished {
		e.problems = append(e.problems, msg)
	}
	return errors.New(msg)
}

// target returns the address to dial for addr, as the requests to it were routed.
func (e *Env) target(addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("httpfxtest: dial %q: %w", addr, err)
	}
	e.mu.Lock()
	d, ok := e.addrs[strings.ToLower(addr)]
	e.mu.Unlock()
	switch {
	case ok && d.s != nil:
		return d.s.addr(d.tls), nil
	case ok || isLoopback(host):
		return addr, nil
	}
	return "", fmt.Errorf("httpfxtest: no route to %s: only requests sent through the app's clients are routed (tests reach only loopback)", addr)
}

// routed reports whether requests to host and port go to a test server.
func (e *Env) routed(host, port string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addrs[net.JoinHostPort(host, port)].s != nil
}

// learnConfig notes the headers that the configuration's upstream entries set, to redact them.
func (e *Env) learnConfig(c httpfx.Config) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, u := range c.Upstreams {
		for k := range u.Headers {
			e.secrets[http.CanonicalHeaderKey(k)] = true
		}
	}
}

// secret reports whether the value of header k is redacted in messages.
func (e *Env) secret(k string) bool {
	if secretName(k) {
		return true
	}
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.secrets[http.CanonicalHeaderKey(k)]
}

// waitConns waits, up to d, until no connection dialled through the env is open, and returns
// how many are.
func (e *Env) waitConns(d time.Duration) int {
	e.mu.Lock()
	if len(e.conns) == 0 {
		e.mu.Unlock()
		return 0
	}
	done := make(chan struct{})
	e.lastConn = done
	e.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastConn = nil
	return len(e.conns)
}

// closeConns closes the connections still open, so that their net/http goroutines end and the
// servers can close.
func (e *Env) closeConns() {
	e.mu.Lock()
	open := make([]*conn, 0, len(e.conns))
	for c := range e.conns {
		open = append(open, c)
	}
	e.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// app is one app built with Env.Module: httpfx's shared client in it, and whether the app was
// started and stopped.
type app struct {
	client           *http.Client
	stats            *httpfx.Stats
	started, stopped atomic.Bool
}

// cut reports whether the stop of an app of the Env cut requests past its drain bound.
func (e *Env) cut() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range e.apps {
		if a.stats.Snapshot().Cut > 0 {
			return true
		}
	}
	return false
}
