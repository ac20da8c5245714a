package httpfx

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"time"
)

// ErrClosed is the error of every request sent through the owned client once stop has begun:
// the request is refused at once, before anything is sent. The client wraps it (in a
// *url.Error), so test for it with errors.Is.
var ErrClosed = errors.New("httpfx: client closed")

// closedBit marks Stats.gate closed; the bits below it count requests in flight.
const closedBit = 1 << 62

// tracker is the RoundTripper of the owned client. It gates admission, counts each request as
// in flight until its response body is finished, and enforces Config.Timeout and
// ResponseHeaderTimeout through the sweeper, so that neither net/http nor the request's
// context needs a timer of its own per request. It is safe for concurrent use.
type tracker struct {
	next http.RoundTripper
	o    *owner
	// transport is next if it is an *http.Transport, not wrapped, else nil. A request with a
	// deadline sent to it takes the fast mode (call.go) where it speaks only HTTP/1.1: over
	// plain TCP (fastHTTP, unless it speaks HTTP/2 there) or over TLS too (fastHTTPS, if
	// HTTP/2 is off); else the own mode, if the caller's context never ends.
	transport           *http.Transport
	fastHTTP, fastHTTPS bool
}

// newTracker returns the tracker of o over next.
func newTracker(o *owner, next http.RoundTripper) *tracker {
	t := &tracker{next: next, o: o}
	if tr, ok := next.(*http.Transport); ok {
		t.transport = tr
		t.fastHTTP = tr.Protocols == nil || !tr.Protocols.UnencryptedHTTP2()
		t.fastHTTPS = http1OverTLS(tr)
	}
	return t
}

// http1OverTLS reports whether t speaks only HTTP/1.1 over TLS, as net/http decides: no
// protocol in TLSNextProto that a server could negotiate instead, and HTTP/2 off, by
// Protocols or else by an empty TLSNextProto (net/http's documented switch). A transport that
// leaves both unset may speak HTTP/2.
func http1OverTLS(t *http.Transport) bool {
	if len(t.TLSNextProto) > 0 {
		return false
	}
	if t.Protocols != nil {
		return !t.Protocols.HTTP2()
	}
	return t.TLSNextProto != nil
}

// fast reports whether a request for scheme takes the fast mode.
func (t *tracker) fast(scheme string) bool {
	switch scheme {
	case "http":
		return t.fastHTTP
	case "https":
		return t.fastHTTPS
	}
	return false
}

var _ http.RoundTripper = (*tracker)(nil)

// RoundTrip implements http.RoundTripper.
func (t *tracker) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTrip(req, nil)
}

// roundTrip sends req on behalf of the upstream client up, or of the owned client if up is
// nil, each with its own overall timeout.
func (t *tracker) roundTrip(req *http.Request, up *upstream) (*http.Response, error) {
	o := t.o
	seq, ok := o.admit()
	if !ok {
		closeBody(req) // A RoundTripper must always close the body.
		return nil, ErrClosed
	}
	ob := o.obs.begin(req, up) // nil unless observed
	c := &call{o: o, up: up, obs: ob}
	c.body.c = c
	req = t.prepare(c, req)
	if up != nil {
		up.stats.requests.Add(1)
		up.stats.inFlight.Add(1) // in flight from admission, as in the totals: waiting included
	}
	if !o.calls.add(c, seq) { // stop has cut already
		return nil, c.endEarly(req, errCut)
	}
	if c.endBy != 0 || c.hdrBy.Load() != 0 {
		o.sweep.kick() // before any wait: the deadlines bound the waits too
	}
	if up != nil {
		if err := up.acquire(c); err != nil {
			return nil, c.endEarly(req, err)
		}
		c.slot = true
	}
	if o.hint != nil {
		req = o.hint.mark(req)
	}
	var lead *h2lead
	if o.gate != nil && req.URL.Scheme == "https" && !t.fastHTTPS { // HTTP/1.1 only: nothing to share
		var err error
		if req, lead, err = o.gate.enter(req); err != nil {
			if f := c.failure(); f != nil {
				err = f // a deadline or stop ended the wait: say which
			}
			return nil, c.endEarly(req, err)
		}
	}
	if c.hdrBy.Load() == hdrAtSend { // a request without a body: the header clock starts now
		c.hdrBy.Store(o.clock.now() + int64(o.cfg.ResponseHeaderTimeout))
	}
	c.req.Store(req)
	if c.phase.Load() != phaseHeaders { // a deadline or stop came first
		if lead != nil {
			o.gate.leave(req.URL.Host, lead, false) // the next request leads
		}
		return nil, c.endEarly(req, c.failure())
	}
	resp, err := t.next.RoundTrip(req)
	for i := 0; i < maxReplays && err != nil && o.health != nil && neverSent(err) && c.phase.Load() == phaseHeaders; i++ {
		again, ok := rewind(req) // replay what provably never reached the server
		if !ok {
			break
		}
		o.stats.replayed.Add(1)
		req = again
		c.req.Store(req)
		resp, err = t.next.RoundTrip(req)
	}
	if lead != nil {
		o.gate.leave(req.URL.Host, lead, err == nil)
	}
	if err == nil && ob != nil {
		ob.respond(resp) // before the phase moves: from then on, another goroutine may end the call
	}
	next := phaseBody
	switch {
	case err != nil:
		next = phaseDone // finished below
	case noBody(req, resp):
		next = phaseDone // finished below
	case resp.StatusCode == http.StatusSwitchingProtocols:
		next = phaseStream // after a 101, the stream lives until it is closed
		c.rc = resp.Body
	default:
		c.rc = resp.Body // before the phase moves: the sweeper may close it from then on
	}
	if !c.endsWith(next) { // a deadline passed, or stop cut it, during the round trip
		if err == nil {
			resp.Body.Close()
		}
		err = c.failure()
	}
	if err != nil { // next has closed the request body
		if o.hint != nil {
			err = o.hint.explain(req, err)
		}
		c.end(err)
		return nil, err
	}
	if o.hint != nil {
		o.hint.answer(req)
	}
	if ka := resp.Header["Keep-Alive"]; len(ka) > 0 && o.health != nil {
		o.health.keepAlive(req.URL, ka[0])
	}
	if noBody(req, resp) {
		c.end(nil)
		return resp, nil
	}
	if w, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &rwBody{body: c.body, w: w}
		return resp, nil
	}
	resp.Body = &c.body
	if o.stopping.Load() {
		c.finishWatch() // stop is draining: it must see this request end when its context does
	}
	if seq%reapEvery == 0 {
		o.calls.reap(seq / reapEvery) // finish abandoned requests whose context ended
	}
	return resp, nil
}

// prepare sets up c for req and returns the request to send: a copy of req whose context is
// c, with the deadlines that apply and the User-Agent.
func (t *tracker) prepare(c *call, req *http.Request) *http.Request {
	o := c.o
	parent := req.Context()
	now := o.clock.now()
	d := o.cfg.Timeout
	if c.up != nil {
		d = c.up.timeout
	}
	if d > 0 {
		if deadline, ok := parent.Deadline(); !ok || time.Until(deadline) > d {
			c.endBy = now + int64(d) // else the caller's deadline comes first
		}
	}
	withBody := req.Body != nil && req.Body != http.NoBody
	rht := o.cfg.ResponseHeaderTimeout
	switch {
	case rht <= 0:
	case withBody:
		c.hdrBy.Store(hdrAfterWrite)
	default:
		c.hdrBy.Store(hdrAtSend)
	}
	if parent.Done() != nil {
		c.watch = parent // its end finishes the request, even if the body is never closed
	}
	// The context: the caller's, with the request's trace: health's hook if the request can be
	// retried, the observation's, and the header clock's if the request has a body. They are
	// one trace, which the call answers httptrace's key with, rather than contexts of
	// httptrace's that compose them (by reflection: four allocations each).
	c.inner = parent
	h := o.health
	if h != nil && !rewindable(req) {
		h = nil
	}
	var trace *httptrace.ClientTrace // the request's own, if it needs one
	switch {
	case c.obs != nil:
		trace, c.obs.check = &c.obs.trace, h // the observation's GotConn runs health's
	case withBody && rht > 0:
		trace = new(httptrace.ClientTrace)
		if h != nil {
			trace.GotConn = h.trace.GotConn
		}
	}
	switch {
	case trace != nil:
		if withBody && rht > 0 {
			trace.WroteRequest = c.wroteRequest
		}
		c.inner = c.withTrace(parent, trace)
	case h != nil:
		if o.traceKey != nil && httptrace.ContextClientTrace(parent) == nil {
			c.tr = &h.trace // shared: nothing composes with it
		} else {
			c.inner = h.traced(parent)
		}
	}
	if c.endBy != 0 || rht > 0 { // the modes of call.go
		switch {
		case t.fast(req.URL.Scheme) && (c.up == nil || c.up.slots == nil): // slots wait on the context
			c.fast = true
		case t.transport != nil && c.inner.Done() == nil:
			c.own = true
		default:
			c.inner, c.cancel = context.WithCancelCause(c.inner)
		}
	}
	r := req.WithContext(c)
	if ua := o.cfg.UserAgent; ua != "" {
		if _, set := req.Header["User-Agent"]; !set { // as net/http, an explicit "" sends none
			r.Header = req.Header.Clone()
			if r.Header == nil {
				r.Header = make(http.Header, 1)
			}
			r.Header.Set("User-Agent", ua)
		}
	}
	return r
}

// noBody reports whether resp has no body to wait for: net/http's NoBody, a response to HEAD,
// a 204 or 304, or an HTTP/2 response whose stream ended with its headers (net/http gives
// those a body of its own, not NoBody, which the caller may never close).
func noBody(req *http.Request, resp *http.Response) bool {
	return resp.Body == nil || resp.Body == http.NoBody || req.Method == http.MethodHead ||
		resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified ||
		(resp.ProtoMajor == 2 && resp.ContentLength == 0)
}

// closeBody closes req's body, as a RoundTripper must when it does not pass req on.
func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// CloseIdleConnections does not close anything: the pool is shared by every component of
// the process, and libraries call this on clients they are handed (go-retryablehttp does
// whenever a request gives up), which would throw away everyone's connections. The call is
// counted in Stats (CloseIdleIgnored) and the first one is logged. httpfx's stop closes the
// pool; the app's owner flushes it on purpose with the package-level CloseIdleConnections.
func (t *tracker) CloseIdleConnections() { t.o.ignoreCloseIdle() }
