package httpfx

import (
	"errors"
	"net/http"
)

// maxReplays bounds how often one request that provably never reached the server is sent
// again: each time, the pool had handed it a connection the server had just closed.
const maxReplays = 3

// errServerClosedIdle is the text of net/http's error for a request whose pooled connection
// the server had closed before the request was written to it (it exports no value for it):
// pinned by TestServerClosedIdleErrorText on every supported Go.
const errServerClosedIdle = "http: server closed idle connection"

// send sends req, r's request, and sends it again while it provably never reached the
// server and its body can be rewound.
func (t *roundTripper) send(r *request, req *http.Request) (*http.Response, error) {
	r.attempts++
	resp, err := t.next.RoundTrip(req)
	for i := 0; i < maxReplays && err != nil && t.o.health != nil && neverSent(err) && r.ctx.Err() == nil; i++ {
		again, ok := rewind(req)
		if !ok {
			break
		}
		t.o.stats.replayed.Add(1)
		req = again
		r.attempts++
		resp, err = t.next.RoundTrip(req)
	}
	return resp, err
}

// neverSent reports whether err proves that the request never reached the server, so that it
// can be sent again whatever its method (RFC 9110 §9.2.2 allows it when the client "can detect
// that the original request was never applied"). Two failures prove it: net/http's "server
// closed idle connection", which it returns only when the server's close of a pooled
// connection was read before the request was counted on it, and so before any byte of it was
// written (net/http replays those only for idempotent methods); and an *unsentError, a close
// after the request was written but before the server's TCP acknowledged any byte of it
// (TCP_INFO, Linux). A reset or close after the server acknowledged the request proves
// nothing: the server may have read it.
func neverSent(err error) bool {
	var u *unsentError
	return errors.As(err, &u) || err.Error() == errServerClosedIdle
}

// rewind returns a copy of req, which net/http has sent and closed the body of, with its body
// rewound, or false if it cannot be rewound.
func rewind(req *http.Request) (*http.Request, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	b, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	r := *req
	r.Body = b
	return &r, true
}
