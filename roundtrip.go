package httpfx

import "net/http"

// roundTripper is the RoundTripper of the shared client, and, through upstream, of every
// upstream client: each request is admitted (or refused with ErrClosed after stop), runs
// under a context of its own with the client's Timeout, waits for its upstream's connection
// limit and for the HTTP/2 cold-start gate, is sent (and sent again when that is safe, see
// retry.go), and stays in flight until its response body is finished. It is safe for
// concurrent use.
type roundTripper struct {
	o    *owner
	next http.RoundTripper // the graph's round tripper: the owned transport unless decorated
}

var _ http.RoundTripper = (*roundTripper)(nil)

// RoundTrip implements http.RoundTripper.
func (t *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTrip(req, nil)
}

// roundTrip sends req for the upstream client up, or for the shared client if up is nil.
func (t *roundTripper) roundTrip(req *http.Request, up *upstream) (*http.Response, error) {
	o := t.o
	r, req, err := o.begin(req, up)
	if err != nil {
		return nil, err
	}
	if up != nil && up.slots != nil {
		if err := up.acquire(r.ctx); err != nil {
			return nil, r.endEarly(req, r.why(err))
		}
		r.slot = true
	}
	var lead *h2lead
	if o.gate != nil && req.URL.Scheme == "https" {
		if req, lead, err = o.gate.enter(req); err != nil {
			return nil, r.endEarly(req, r.why(err))
		}
	}
	if o.hint != nil {
		req = o.hint.mark(req)
	}
	resp, err := t.send(r, req)
	if lead != nil {
		o.gate.leave(req.URL.Host, lead, err == nil)
	}
	if o.hint != nil {
		err = o.hint.check(req, err)
	}
	return r.respond(req, resp, err)
}

// CloseIdleConnections does not close anything: the pool is shared by every component of
// the process, and libraries call this on clients they are handed (go-retryablehttp does
// whenever a request gives up), which would throw away everyone's connections. The call is
// counted in Stats (CloseIdleIgnored) and the first one is logged. httpfx's stop closes the
// pool; the app's owner flushes it on purpose with the package-level CloseIdleConnections.
func (t *roundTripper) CloseIdleConnections() { t.o.ignoreCloseIdle() }
