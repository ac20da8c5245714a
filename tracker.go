package httpfx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
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
	if d > 0 {
		ctx := req.Context()
		if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > d {
			ctx, cancel = context.WithTimeoutCause(ctx, d, cause)
			req = req.WithContext(ctx)
		}
	}
	if ua := o.cfg.UserAgent; ua != "" {
		if _, set := req.Header["User-Agent"]; !set { // as net/http, an explicit "" sends none
			req = withHeader(req, "User-Agent", ua)
		}
	}
	if up != nil {
		up.stats.requests.Add(1)
		if err := up.acquire(req.Context()); err != nil {
			up.stats.failed.Add(1)
			closeBody(req)
			ob.done(nil, err)
			o.finish(cancel, nil, true)
			return nil, err
		}
		up.stats.inFlight.Add(1)
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
	if lead != nil {
		o.gate.leave(req.URL.Host, lead, err == nil)
	}
	if err != nil { // next has closed the request body
		err = o.explain(req, err)
		ob.done(nil, err)
		o.finish(cancel, up, true)
		return nil, err
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		ob.done(resp, nil)
		o.finish(cancel, up, false)
		return resp, nil
	}
	// A request whose context ends (the caller cancelled, or a deadline passed) is finished
	// even if the caller never reads or closes the body. After a 101, net/http no longer
	// watches the context: the stream lives until it is closed.
	var ctx context.Context
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

// explain adds to a request's error what net/http cannot say: a TLS 1.3 server that rejects
// the client's certificate closes the connection right after the handshake, and the client
// sees only a broken or unusable connection. If an upstream asked for a client certificate
// and none is configured, such an error of an HTTPS request says so.
func (o *owner) explain(req *http.Request, err error) error {
	if !o.certAsked.Load() || req.URL.Scheme != "https" || !looksCut(err) {
		return err
	}
	return fmt.Errorf("httpfx: an upstream asked for a client certificate and none is configured; if this one requires it (mutual TLS), set TLSCertFile and TLSKeyFile: %w", err)
}

// looksCut reports whether err is what a peer closing a fresh connection looks like.
func looksCut(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "remote error: tls:") || strings.Contains(msg, "http2: client conn")
}

// CloseIdleConnections closes the idle connections of the transport httpfx built, however the
// round tripper was wrapped, and forwards to the round tripper in use if it is another one and
// has the method: a call on the owned client is the caller's own request.
func (t *tracker) CloseIdleConnections() {
	t.o.transport.CloseIdleConnections()
	if ci, ok := t.next.(interface{ CloseIdleConnections() }); ok && t.next != http.RoundTripper(t.o.transport) {
		ci.CloseIdleConnections()
	}
}
