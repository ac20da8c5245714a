package httpfxtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"

	nobody "github.com/httpfx/httpfx/internal/body"
)

// recorder is the app's http.RoundTripper in test mode: it routes each request, captures the
// stack that sent it and tracks its response body until the caller closes it or reads it to
// EOF. It sits under httpfx's client, so the drain and ErrClosed work as in production. It is
// safe for concurrent use.
type recorder struct {
	env  *Env
	next http.RoundTripper
}

var _ http.RoundTripper = (*recorder)(nil)

// RoundTrip implements http.RoundTripper.
func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	tg, _ := req.Context().Value(tagKey{}).(*tag)
	if err := r.env.route(req, tg); err != nil {
		if req.Body != nil {
			req.Body.Close() // a RoundTripper must always close the body
		}
		return nil, err
	}
	var pcs [64]uintptr
	n := runtime.Callers(2, pcs[:])
	resp, err := r.next.RoundTrip(req)
	if err != nil || nobody.None(req, resp) { // httpfx's rule: nothing to close or read
		return resp, err
	}
	b := &body{rc: resp.Body, env: r.env, ctx: req.Context(), method: req.Method, url: safeURL(req.URL), stack: append([]uintptr(nil), pcs[:n]...)}
	if tg != nil {
		b.upstream = tg.name
	}
	if !r.env.track(b) {
		return resp, nil // the test has ended
	}
	if w, ok := resp.Body.(io.ReadWriteCloser); ok { // a 101 Switching Protocols stream
		resp.Body = &rwBody{body: b, w: w}
	} else {
		resp.Body = b
	}
	return resp, nil
}

// CloseIdleConnections forwards to the round tripper underneath, as if the recorder were not
// there.
func (r *recorder) CloseIdleConnections() {
	if ci, ok := r.next.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// tag marks the requests of an upstream client routed by name.
type tag struct {
	name   string
	header http.Header // the request's headers as the component set them
}

type tagKey struct{}

// tagger is the RoundTripper of the copy of an upstream client routed by name: it marks each
// request with the name, then sends it through the client's own RoundTripper. It is safe for
// concurrent use.
type tagger struct {
	name string
	next http.RoundTripper
}

var _ http.RoundTripper = (*tagger)(nil)

// tagClient returns a copy of c that marks its requests as those of the upstream name.
func tagClient(c *http.Client, name string) *http.Client {
	if c == nil {
		return nil // no such client: Module's check says so
	}
	cp := *c
	next := c.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	cp.Transport = &tagger{name: name, next: next}
	return &cp
}

// RoundTrip implements http.RoundTripper.
func (t *tagger) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := context.WithValue(req.Context(), tagKey{}, &tag{name: t.name, header: req.Header})
	return t.next.RoundTrip(req.WithContext(ctx))
}

// CloseIdleConnections forwards to the client's own RoundTripper.
func (t *tagger) CloseIdleConnections() {
	if ci, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// adjust changes the owned transport in place, before httpfx wraps its dial to count
// connections: dials go where the requests were routed, routed hosts get no proxy, and the
// Env's test CA is trusted besides the configured roots.
func (e *Env) adjust(t *http.Transport) {
	dial := t.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		target, err := e.target(addr)
		if err != nil {
			return nil, err
		}
		c, err := dial(ctx, network, target)
		if err != nil {
			return nil, err
		}
		return e.addConn(c), nil
	}
	proxy := t.Proxy
	t.Proxy = func(r *http.Request) (*url.URL, error) {
		if e.routed(hostPort(r.URL)) || proxy == nil {
			return nil, nil
		}
		return proxy(r)
	}
	if t.TLSClientConfig == nil {
		t.TLSClientConfig = new(tls.Config)
	}
	pool := t.TLSClientConfig.RootCAs
	switch sys, err := x509.SystemCertPool(); {
	case pool != nil:
		pool = pool.Clone()
	case err == nil:
		pool = sys
	default:
		pool = x509.NewCertPool()
	}
	pool.AddCert(e.certs.ca)
	t.TLSClientConfig.RootCAs = pool
}

// addConn records c as open until it is closed.
func (e *Env) addConn(c net.Conn) net.Conn {
	tc := &conn{Conn: c, env: e}
	e.mu.Lock()
	e.conns[tc] = struct{}{}
	e.mu.Unlock()
	return tc
}

// conn is a connection the app's transport dialled through the Env.
type conn struct {
	net.Conn
	env    *Env
	closed atomic.Bool
}

func (c *conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		e := c.env
		e.mu.Lock()
		delete(e.conns, c)
		if len(e.conns) == 0 && e.lastConn != nil {
			close(e.lastConn)
			e.lastConn = nil
		}
		e.mu.Unlock()
	}
	return c.Conn.Close()
}

// hostPort returns u's host in lower case and its port, the scheme's default if none.
func hostPort(u *url.URL) (string, string) {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return strings.ToLower(u.Hostname()), port
}

// hostKey checks a route's "host" or "host:port" and returns its key.
func hostKey(s string) (string, error) {
	if s == "" || strings.ContainsAny(s, "/@?# ") {
		return "", fmt.Errorf("want a host or host:port, such as \"payments.internal\" or \"payments.internal:8443\"")
	}
	u, err := url.Parse("//" + s)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("want a host or host:port, such as \"payments.internal\" or \"payments.internal:8443\"")
	}
	if u.Port() == "" {
		return strings.ToLower(u.Hostname()), nil
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), u.Port()), nil
}

// isLoopback reports whether host is a loopback address or localhost.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// safeURL is u without userinfo, query and fragment, for messages.
func safeURL(u *url.URL) string {
	v := *u
	v.User, v.RawQuery, v.ForceQuery, v.Fragment, v.RawFragment = nil, "", false, "", ""
	return v.String()
}

func scheme(tls bool) string {
	if tls {
		return "https"
	}
	return "http"
}
