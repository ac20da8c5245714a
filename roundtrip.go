package httpfx

import "net/http"

// roundTripper is the RoundTripper of the shared client, and, through upstream, of every
// upstream client: each request is admitted (or refused with ErrClosed after stop), runs
// under a context of its own with the client's Timeout, waits for its upstream's connection
// limit, is sent through next (and sent again when that is safe, see retry.go), and stays in
// flight until its response body is finished. It is safe for concurrent use.
type roundTripper struct {
	o    *owner
	next http.RoundTripper // the HTTP/2 cold-start gate and the certificate hint, if any, over the graph's round tripper
}

var _ http.RoundTripper = (*roundTripper)(nil)

// RoundTrip implements http.RoundTripper.
func (t *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTrip(req, nil)
}

// roundTrip sends req for the upstream client up, or for the shared client if up is nil:
// admitted and given its context (request.go), sent, and sent again when that is safe
// (retry.go), then handed back with a body that keeps it in flight (request.go).
func (t *roundTripper) roundTrip(req *http.Request, up *sender) (*http.Response, error) {
	r, req, err := t.o.begin(req, up)
	if err != nil {
		return nil, err
	}
	resp, err := t.send(r, req)
	return r.respond(req, resp, err)
}

// CloseIdleConnections does not close anything: the pool is shared by every component of
// the process, and libraries call this on clients they are handed (go-retryablehttp does
// whenever a request gives up), which would throw away everyone's connections. The call is
// counted in Stats (CloseIdleIgnored) and the first one is logged. httpfx's stop closes the
// pool; the app's owner flushes it on purpose with the package-level CloseIdleConnections.
func (t *roundTripper) CloseIdleConnections() { t.o.ignoreCloseIdle() }
