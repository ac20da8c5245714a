package httpfx

import (
	"context"
	"errors"
	"io"
	"net/http"
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
	o := t.o
	if !o.admit() {
		if req.Body != nil {
			req.Body.Close() // A RoundTripper must always close the body.
		}
		return nil, ErrClosed
	}
	cancel := context.CancelFunc(nil)
	if d := o.cfg.Timeout; d > 0 {
		ctx := req.Context()
		if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > d {
			ctx, cancel = context.WithTimeoutCause(ctx, d, o.timeoutErr)
			req = req.WithContext(ctx)
		}
	}
	if ua := o.cfg.UserAgent; ua != "" && req.Header.Get("User-Agent") == "" {
		req = req.Clone(req.Context())
		req.Header.Set("User-Agent", ua)
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		o.finish(cancel, true)
		return nil, err
	}
	switch {
	case resp.Body == nil || resp.Body == http.NoBody:
		o.finish(cancel, false)
	case resp.StatusCode == http.StatusSwitchingProtocols:
		if w, ok := resp.Body.(io.ReadWriteCloser); ok {
			resp.Body = &rwBody{body: body{rc: w, o: o, cancel: cancel}, w: w}
			break
		}
		fallthrough
	default:
		resp.Body = &body{rc: resp.Body, o: o, cancel: cancel}
	}
	return resp, nil
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
	rc     io.ReadCloser
	o      *owner
	cancel context.CancelFunc // nil if no timeout applies
	done   atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && b.done.CompareAndSwap(false, true) {
		b.o.finish(b.cancel, err != io.EOF)
	}
	return n, err
}

func (b *body) Close() error {
	err := b.rc.Close()
	if b.done.CompareAndSwap(false, true) {
		b.o.finish(b.cancel, false)
	}
	return err
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
