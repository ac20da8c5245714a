package httpfx

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"
)

// ErrClosed is the error of every request sent through the owned client once stop has begun:
// the request is refused at once, before anything is sent. The client wraps it (in a
// *url.Error), so test for it with errors.Is.
var ErrClosed = errors.New("httpfx: client closed")

// closedBit marks Stats.gate closed; the bits below it count requests in flight.
const closedBit = 1 << 62

// tracker is the RoundTripper of the owned client. It gates admission, counts each request as
// in flight until its response body is finished, and enforces Config.Timeout through the
// request's context, so that net/http needs no goroutine and timer of its own per request.
// It is safe for concurrent use.
type tracker struct {
	next http.RoundTripper
	o    *owner
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
	ob, req := o.obs.begin(req, up) // nil unless observed
	d, cause := o.cfg.Timeout, o.timeoutErr
	if up != nil {
		d, cause = up.timeout, up.timeoutErr
	}
	cancel := context.CancelFunc(nil)
	ctx, changed := req.Context(), false
	if d > 0 {
		if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > d {
			ctx, cancel = context.WithTimeoutCause(ctx, d, cause)
			changed = true
		}
	}
	if h := o.health; h != nil && rewindable(req) {
		ctx, changed = h.traced(ctx), true // check the connection it takes (health.go)
	}
	if changed {
		req = req.WithContext(ctx)
	}
	if ua := o.cfg.UserAgent; ua != "" {
		if _, set := req.Header["User-Agent"]; !set { // as net/http, an explicit "" sends none
			req = withHeader(req, "User-Agent", ua)
		}
	}
	if up != nil {
		up.stats.requests.Add(1)
		up.stats.inFlight.Add(1) // in flight from admission, as in the totals: waiting included
		if err := up.acquire(req.Context()); err != nil {
			up.done(true, false)
			closeBody(req)
			ob.done(nil, err)
			o.finish(cancel, nil, true)
			return nil, err
		}
	}
	if o.hint != nil {
		req = o.hint.mark(req)
	}
	var lead *h2lead
	if o.gate != nil && req.URL.Scheme == "https" {
		var err error
		if req, lead, err = o.gate.enter(req); err != nil {
			closeBody(req)
			ob.done(nil, err)
			o.finish(cancel, up, true)
			return nil, err
		}
	}
	resp, err := t.next.RoundTrip(req)
	for i := 0; i < maxReplays && err != nil && o.health != nil && neverSent(err); i++ {
		again, ok := rewind(req) // replay what provably never reached the server
		if !ok {
			break
		}
		o.stats.replayed.Add(1)
		req = again
		resp, err = t.next.RoundTrip(req)
	}
	if lead != nil {
		o.gate.leave(req.URL.Host, lead, err == nil)
	}
	if err != nil { // next has closed the request body
		if o.hint != nil {
			err = o.hint.explain(req, err)
		}
		ob.done(nil, err)
		o.finish(cancel, up, true)
		return nil, err
	}
	if o.hint != nil {
		o.hint.answer(req)
	}
	if ka := resp.Header["Keep-Alive"]; len(ka) > 0 && o.health != nil {
		o.health.keepAlive(req.URL, ka[0])
	}
	if noBody(req, resp) {
		ob.done(resp, nil)
		o.finish(cancel, up, false)
		return resp, nil
	}
	// A request whose context ends (the caller cancelled, or a deadline passed) is finished
	// even if the caller never reads or closes the body. After a 101, net/http no longer
	// watches the context: the stream lives until it is closed.
	ctx = nil
	if resp.StatusCode != http.StatusSwitchingProtocols && req.Context().Done() != nil {
		ctx = req.Context()
	}
	var b *body
	if w, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		rw := &rwBody{body: body{rc: w, o: o, up: up, cancel: cancel}, w: w}
		b, resp.Body = &rw.body, rw
	} else {
		b = &body{rc: resp.Body, o: o, up: up, cancel: cancel, ctx: ctx}
		resp.Body = b
	}
	b.obs = ob.respond(resp)
	if !o.bodies.add(b, seq) {
		b.cut() // stop has cut the bodies in flight already
		return resp, nil
	}
	if ctx != nil && o.stopping.Load() {
		b.watch() // stop is draining: it must see this request end when its context does
	}
	if seq%reapEvery == 0 {
		o.bodies.reap(seq / reapEvery) // finish abandoned requests whose context ended
	}
	return resp, nil
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

// withHeader returns a shallow copy of req with header k set to v, leaving req as it is.
func withHeader(req *http.Request, k, v string) *http.Request {
	r := *req
	r.Header = req.Header.Clone()
	if r.Header == nil {
		r.Header = make(http.Header, 1)
	}
	r.Header.Set(k, v)
	return &r
}

// CloseIdleConnections does not close anything: the pool is shared by every component of
// the process, and libraries call this on clients they are handed (go-retryablehttp does
// whenever a request gives up), which would throw away everyone's connections. The call is
// counted in Stats (CloseIdleIgnored) and the first one is logged. httpfx's stop closes the
// pool; the app's owner flushes it on purpose with the package-level CloseIdleConnections.
func (t *tracker) CloseIdleConnections() { t.o.ignoreCloseIdle() }
