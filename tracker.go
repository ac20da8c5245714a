package httpfx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
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
	d, cause := o.cfg.Timeout, o.timeoutErr
	if up != nil {
		d, cause = up.timeout, up.timeoutErr
	}
	if !o.admit() {
		if req.Body != nil {
			req.Body.Close() // A RoundTripper must always close the body.
		}
		if up != nil && up.slots != nil {
			<-up.slots
		}
		return nil, ErrClosed
	}
	if up != nil {
		up.stats.requests.Add(1)
		up.stats.inFlight.Add(1)
	}
	cancel := context.CancelFunc(nil)
	if d > 0 {
		ctx := req.Context()
		if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > d {
			ctx, cancel = context.WithTimeoutCause(ctx, d, cause)
			req = req.WithContext(ctx)
		}
	}
	if ua := o.cfg.UserAgent; ua != "" && req.Header.Get("User-Agent") == "" {
		req = req.Clone(req.Context())
		req.Header.Set("User-Agent", ua)
	}
	leader := false
	if o.gate != nil && req.URL.Scheme == "https" {
		var err error
		if req, leader, err = o.gate.enter(req); err != nil {
			o.finish(cancel, up, true)
			return nil, err
		}
	}
	resp, err := t.next.RoundTrip(req)
	if leader {
		o.gate.leave(req, err == nil)
	}
	if err != nil {
		o.finish(cancel, up, true)
		return nil, o.explain(err)
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		o.finish(cancel, up, false)
		return resp, nil
	}
	var b *body
	if w, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		rw := &rwBody{body: body{rc: w, o: o, up: up, cancel: cancel}, w: w}
		b, resp.Body = &rw.body, rw
	} else {
		b = &body{rc: resp.Body, o: o, up: up, cancel: cancel}
		resp.Body = b
	}
	o.bodies.add(b)
	if req.Context().Done() != nil {
		// A request whose context ends (the caller cancelled, or a deadline passed) leaves the
		// in-flight count at once, even if the caller never reads or closes the body.
		b.stop = context.AfterFunc(req.Context(), b.abort)
	}
	return resp, nil
}

// explain adds to a request's error what net/http cannot say: a TLS 1.3 server that rejects
// the client's certificate closes the connection after the handshake, and the client then
// sees only a broken or unusable connection. If an upstream asked for a client certificate
// and none is configured, the error says so.
func (o *owner) explain(err error) error {
	if !o.certAsked.Load() || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("httpfx: an upstream asked for a client certificate and none is configured; if it requires one (mutual TLS), set TLSCertFile and TLSKeyFile: %w", err)
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

// body tracks a response body: the request stays in flight until the body is closed, read to
// EOF or fails, whichever comes first. It is safe for a Close concurrent with a Read, as
// net/http's bodies are.
type body struct {
	prev, next *body // in owner.bodies while in flight

	rc     io.ReadCloser
	o      *owner
	up     *upstream          // the upstream client that sent it; nil for the owned client
	cancel context.CancelFunc // ends the request's own timeout context; nil if none
	stop   func() bool        // unregisters abort from the request's context; nil if none
	done   atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.end(err != io.EOF, false)
	}
	return n, err
}

func (b *body) Close() error {
	err := b.rc.Close()
	b.end(false, false)
	return err
}

// abort runs, in a goroutine of its own, when the request's context ends before the body
// does. It may run before RoundTrip has stored stop, so it does not read it.
func (b *body) abort() { b.end(true, true) }

// end finishes the request once, whichever of Read, Close and abort comes first.
func (b *body) end(failed, aborted bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	if !aborted && b.stop != nil {
		b.stop()
	}
	b.o.bodies.remove(b)
	b.o.finish(b.cancel, b.up, failed)
}

// cut closes the body under the caller, who may never close it, so that net/http lets go of
// its connection and goroutines, and finishes the request as failed.
func (b *body) cut() {
	b.rc.Close()
	b.end(true, false)
}

// bodyList holds the bodies in flight, so that stop can cut the ones nobody closes. Adding and
// removing take a short lock and no allocation. It is safe for concurrent use once init ran.
type bodyList struct {
	mu   sync.Mutex
	head body // sentinel of a circular list
}

func (l *bodyList) init() { l.head.prev, l.head.next = &l.head, &l.head }

func (l *bodyList) add(b *body) {
	l.mu.Lock()
	b.prev, b.next = l.head.prev, &l.head
	l.head.prev.next = b
	l.head.prev = b
	l.mu.Unlock()
}

func (l *bodyList) remove(b *body) {
	l.mu.Lock()
	b.prev.next, b.next.prev = b.next, b.prev
	b.prev, b.next = nil, nil
	l.mu.Unlock()
}

// all returns the bodies in flight now.
func (l *bodyList) all() []*body {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*body
	for b := l.head.next; b != &l.head; b = b.next {
		out = append(out, b)
	}
	return out
}

// rwBody keeps a 101 Switching Protocols body writable, as net/http returns it.
type rwBody struct {
	body
	w io.Writer
}

func (b *rwBody) Write(p []byte) (int, error) { return b.w.Write(p) }

var (
	_ io.ReadCloser      = (*body)(nil)
	_ io.ReadWriteCloser = (*rwBody)(nil)
)
