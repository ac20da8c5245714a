package httpfx

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/httpfx/httpfx/internal/body"
)

// sender is what a request needs of the upstream client that sent it (see Upstream): its
// name, Timeout and connection limit, and its counters. The shared client has none.
type sender struct {
	name       string
	timeout    time.Duration // of the whole request; zero: none
	timeoutErr error         // the cause of a request's context when timeout expires
	slots      chan struct{} // MaxConnsPerHost tokens; nil if unbounded
	stats      *upstreamStats
	retry      RetryConfig // Config.Retry, overridden by its own
	attemptErr error       // the error of an attempt past retry.AttemptTimeout
}

// request is one request of a client httpfx built, in flight from admission until it is
// finished: its round trip failed, or its response body was closed, read to EOF or failed, or
// stop cut it. It runs under a context of its own, the caller's with the deadline of the
// client's Timeout if that comes first, which net/http watches as it watches any request's
// context, and which is cancelled when the request is finished. While in flight it is listed,
// so that stop can cut it. Its fields are set by the caller's goroutine before the response is
// returned; the flags are safe for concurrent use by the caller, stop and net/http.
type request struct {
	prev, next *request // in its shard of the in-flight list while listed
	shard      *shard   // nil until listed

	o        *owner
	up       *sender         // the upstream client that sent it; nil for the shared client
	parent   context.Context // the caller's context
	ctx      context.Context // the request's own: parent, with its deadline; ended when it is finished
	cancel   context.CancelFunc
	timeout  error         // the error of ctx's own deadline; nil if parent's comes first or none applies
	retry    *RetryConfig  // of the client that sent it
	obs      *obsReq       // nil unless observed
	attempts int           // how many times it was sent
	slot     bool          // it holds one of its upstream's MaxConnsPerHost slots
	stream   bool          // the response is a 101 stream, which no context ends
	rc       io.ReadCloser // the response body, once bodyOut is set

	attemptTimeout error                   // the error of an attempt past retry.AttemptTimeout
	cancelAttempt  context.CancelCauseFunc // ends the context of the attempt that got the response; nil if none

	bodyOut atomic.Bool                 // the response body was handed to the caller
	cut     atomic.Bool                 // stop cut it
	ended   atomic.Bool                 // end has run
	unwatch atomic.Pointer[func() bool] // undoes watch; nil unless watched
	unclose atomic.Pointer[func() bool] // undoes closeAtEnd; nil unless the request body streams
	body    bodyReader                  // the wrapper of rc the caller reads
}

// begin admits req, sent by the upstream client up or by the shared client if up is nil, and
// returns the request in flight and the copy of req to send: with the request's own context,
// the trace that checks its connection (health, observers) and the User-Agent. It returns
// ErrClosed once stop has begun; it closes req's body then, as a RoundTripper must.
func (o *owner) begin(req *http.Request, up *sender) (*request, *http.Request, error) {
	seq, ok := o.admit()
	if !ok {
		closeBody(req)
		return nil, nil, ErrClosed
	}
	r := &request{o: o, up: up, parent: req.Context()}
	r.body.r = r
	d, timeoutErr := o.cfg.Timeout, o.timeoutErr
	r.retry, r.attemptTimeout = &o.cfg.Retry, o.attemptErr
	if up != nil {
		d, timeoutErr = up.timeout, up.timeoutErr
		r.retry, r.attemptTimeout = &up.retry, up.attemptErr
		up.stats.requests.Add(1)
		up.stats.inFlight.Add(1) // in flight from admission, as in the totals: waiting included
	}
	if deadline, ok := r.parent.Deadline(); d > 0 && (!ok || time.Until(deadline) > d) {
		r.ctx, r.cancel = context.WithDeadlineCause(r.parent, time.Now().Add(d), timeoutErr)
		r.timeout = timeoutErr
	} else {
		r.ctx, r.cancel = context.WithCancel(r.parent) // stop can still cut it
	}
	// The trace that tells which connection the request got: the observation's, or the
	// connections' own, if the transport is the owned one.
	ctx := r.ctx
	again := rewindable(req) // net/http sends only those again on another connection
	switch {
	case o.obs != nil:
		name := ""
		if up != nil {
			name = up.name
		}
		r.obs = o.obs.begin(req, name, again)
		ctx = withTrace(ctx, &r.obs.trace, false)
	case o.health != nil && again:
		ctx = withTrace(ctx, &o.conns.traceRewindable, true)
	case o.health != nil:
		ctx = withTrace(ctx, &o.conns.traceOnce, true)
	}
	if !again {
		r.closeAtEnd(req.Body) // it may stream
	}
	send := req.WithContext(ctx)
	if ua := o.cfg.UserAgent; ua != "" {
		if _, set := req.Header["User-Agent"]; !set { // as net/http, an explicit "" sends none
			send.Header = req.Header.Clone()
			if send.Header == nil {
				send.Header = make(http.Header, 1)
			}
			send.Header.Set("User-Agent", ua)
		}
	}
	if !o.requests.add(r, seq) { // stop has cut already
		return nil, nil, r.endEarly(send, errCut)
	}
	if seq%reapEvery == 0 {
		o.requests.reap(seq / reapEvery)
	}
	if up != nil && up.slots != nil {
		if err := r.waitSlot(); err != nil {
			return nil, nil, r.endEarly(send, r.why(err))
		}
	}
	return r, send, nil
}

// waitSlot waits, as long as the request's context allows (its Timeout covers the wait),
// until its upstream has room for one more request in flight (MaxConnsPerHost), counting the
// request as waiting meanwhile. It comes after admission, so that stop refuses new requests at
// once.
func (r *request) waitSlot() error {
	up := r.up
	select {
	case up.slots <- struct{}{}:
		r.slot = true
		return nil
	default:
	}
	up.stats.waiting.Add(1)
	defer up.stats.waiting.Add(-1)
	select {
	case up.slots <- struct{}{}:
		r.slot = true
		return nil
	case <-r.ctx.Done():
		return fmt.Errorf("httpfx: upstream %q: waiting for one of its MaxConnsPerHost (%d): %w",
			up.name, cap(up.slots), context.Cause(r.ctx))
	}
}

// withTrace returns ctx carrying trace. A trace that is shared is copied if ctx has a trace
// already, because httptrace adds ctx's hooks to the trace it is given.
func withTrace(ctx context.Context, trace *httptrace.ClientTrace, shared bool) context.Context {
	if shared && httptrace.ContextClientTrace(ctx) != nil {
		t := *trace
		trace = &t
	}
	return httptrace.WithClientTrace(ctx, trace)
}

// rewindable reports whether req can be sent again on another connection: it has no body, or
// GetBody rewinds it.
func rewindable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// respond finishes the round trip of r, which sent req and got resp or err: a failure ends
// the request with the error that says why; a response without a body ends it at once; any
// other response is returned with a body that ends it when it is closed, read to EOF or fails.
func (r *request) respond(req *http.Request, resp *http.Response, err error) (*http.Response, error) {
	if err == nil && r.ctx.Err() != nil {
		// net/http hands back a response that raced the cancellation, which may be the
		// server's reaction to it (a handler cut short answers with what it had): as for a
		// body that ends then, the request failed with its context.
		resp.Body.Close()
		resp, err = nil, context.Cause(r.ctx)
	}
	if err != nil {
		err = r.why(err)
		r.end(err)
		return nil, err
	}
	if r.obs != nil {
		r.obs.respond(resp)
	}
	if ka := resp.Header["Keep-Alive"]; len(ka) > 0 && r.o.health != nil {
		r.o.health.keepAlive(req.URL, ka[0])
	}
	if resp.Close && r.o.health != nil {
		r.o.health.closing(req.URL)
	}
	switch {
	case body.None(req, resp):
		r.end(nil)
		return resp, nil
	case resp.StatusCode == http.StatusSwitchingProtocols:
		// The stream lives until it is closed, past any deadline: net/http handed the
		// connection over.
		if w, ok := resp.Body.(io.ReadWriteCloser); ok {
			r.rc, r.stream = resp.Body, true
			resp.Body = &rwBody{bodyReader: r.body, w: w}
			r.publish()
			return resp, nil
		}
	}
	r.rc = resp.Body
	resp.Body = &r.body
	r.publish()
	return resp, nil
}

// publish hands the body to the caller.
func (r *request) publish() {
	r.bodyOut.Store(true)
	if r.o.stopping.Load() && !r.stream {
		r.watch() // stop is draining: it must see this request end when its context does
	}
	if r.cut.Load() { // stop cut it while the round trip returned
		if r.stream {
			r.rc.Close()
		}
		r.end(errCut)
	}
}

// why returns the error to report for err, an error of r's round trip or body: the cut, the
// timeout whose deadline passed, or err.
func (r *request) why(err error) error {
	switch {
	case r.cut.Load():
		return errCut
	case r.timeout != nil && r.ctx.Err() == context.DeadlineExceeded && r.parent.Err() == nil:
		return r.timeout // the request's own deadline passed
	case isHeaderTimeout(err):
		return &timeoutError{what: r.o.headerTimeoutName, d: r.o.headerTimeout, waiting: "for the response headers", err: err}
	}
	return err
}

// end finishes the request once, whichever of the round trip's failure, the body's Read or
// Close, the context's end and stop's cut comes first; err is nil if it went well, else why it
// failed.
func (r *request) end(err error) {
	if !r.ended.CompareAndSwap(false, true) {
		return
	}
	r.o.requests.remove(r)
	if r.obs != nil {
		r.obs.finish(err, r.attempts)
	}
	if unwatch := r.unwatch.Load(); unwatch != nil {
		(*unwatch)()
	}
	if unclose := r.unclose.Load(); unclose != nil {
		(*unclose)()
	}
	if r.cancelAttempt != nil {
		r.cancelAttempt(nil)
	}
	r.cancel()
	if up := r.up; up != nil {
		if err != nil {
			up.stats.failed.Add(1)
		}
		up.stats.inFlight.Add(-1)
		if r.slot {
			<-up.slots
		}
	}
	r.o.finish(err != nil)
}

// endEarly finishes a request that never got a response, with err, and returns err. As a
// RoundTripper must, it closes req's body.
func (r *request) endEarly(req *http.Request, err error) error {
	closeBody(req)
	r.end(err)
	return err
}

// cutNow is stop's, past the drain bound: it ends the request under its caller, who may never
// close its body. Cancelling its context is enough for net/http to let go of the round trip,
// or of the body and its connection, as for any request whose context ends; only a 101
// stream, which net/http handed over, is closed. The body itself is left for the caller to
// close. A request whose body is not out yet is ended by its own goroutine, as its round trip
// returns (respond, or publish if it was a response), so that no other goroutine reads what
// that one still writes.
func (r *request) cutNow() {
	r.cut.Store(true)
	r.cancel()
	if r.bodyOut.Load() {
		if r.stream {
			r.rc.Close()
		}
		r.end(errCut)
	}
}

// watch finishes the request when its context ends, in a goroutine of the context's: stop
// calls it for the requests reading their body, so that it does not wait for bodies their
// callers abandoned.
func (r *request) watch() {
	unwatch := context.AfterFunc(r.ctx, func() { r.end(r.why(context.Cause(r.ctx))) })
	r.unwatch.Store(&unwatch)
}

// closeAtEnd closes body, a request body that may stream (it has no GetBody), if the request's
// context ends before the request is finished. net/http's HTTP/1 transport returns a cancelled
// round trip only once its writer stops, and its writer may wait in the body's Read for a
// producer that stalled (HTTP/2 closes the body itself): a deadline or stop then ends the
// request as for any other.
func (r *request) closeAtEnd(body io.Closer) {
	unclose := context.AfterFunc(r.ctx, func() { body.Close() })
	r.unclose.Store(&unclose)
}

// bodyReader is the response body the caller reads: the request stays in flight until it is
// closed, read to EOF or fails. It is safe for a Close concurrent with a Read, as net/http's
// bodies are.
type bodyReader struct{ r *request }

func (b *bodyReader) Read(p []byte) (int, error) {
	r := b.r
	n, err := r.rc.Read(p)
	if err == io.EOF && r.ctx.Err() != nil && !r.ended.Load() {
		// The context ended first: an end of the body now may be the server's reaction to
		// the cancellation (a chunked response ended early), so it is not a complete body.
		err = context.Cause(r.ctx)
	}
	switch {
	case err == io.EOF:
		r.end(nil)
	case err != nil:
		err = r.why(err)
		r.end(err)
	}
	return n, err
}

func (b *bodyReader) Close() error {
	err := b.r.rc.Close()
	b.r.end(nil)
	return err
}

// rwBody keeps a 101 Switching Protocols body writable, as net/http returns it.
type rwBody struct {
	bodyReader
	w io.Writer
}

func (b *rwBody) Write(p []byte) (int, error) { return b.w.Write(p) }

var (
	_ io.ReadCloser      = (*bodyReader)(nil)
	_ io.ReadWriteCloser = (*rwBody)(nil)
)

// closeBody closes req's body, as a RoundTripper must when it does not pass req on.
func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// The in-flight list.

// shards is how many locks the requests in flight are spread over, so that requests on many
// cores seldom wait for one another.
const shards = 16

// reapEvery is how often, in requests, one shard of the list is looked through for requests
// whose context ended while their caller left the body unread, so that abandoned bodies do
// not pile up: net/http lets go of them when their context ends, and so does httpfx.
const reapEvery = 1024

// requestList holds the requests in flight, so that stop can cut the ones nobody finishes.
// Adding and removing take a short lock of one shard and no allocation. It is safe for
// concurrent use once init ran.
type requestList struct {
	shards [shards]shard
}

type shard struct {
	mu     sync.Mutex
	head   request // sentinel of a circular list
	closed bool    // stop has cut this shard: no more requests
	_      [64]byte
}

func (l *requestList) init() {
	for i := range l.shards {
		h := &l.shards[i].head
		h.prev, h.next = h, h
	}
}

// add lists r in the shard of the request numbered seq, or reports false if stop has cut.
func (l *requestList) add(r *request, seq int64) bool {
	s := &l.shards[uint64(seq)%shards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	r.shard = s
	r.prev, r.next = s.head.prev, &s.head
	s.head.prev.next = r
	s.head.prev = r
	return true
}

func (l *requestList) remove(r *request) {
	s := r.shard
	if s == nil {
		return
	}
	s.mu.Lock()
	if r.prev != nil {
		r.prev.next, r.next.prev = r.next, r.prev
		r.prev, r.next = nil, nil
	}
	s.mu.Unlock()
}

// reap finishes the requests of shard i whose body is out and whose context has ended.
func (l *requestList) reap(i int64) {
	var ended []*request
	s := &l.shards[i%shards]
	s.mu.Lock()
	for r := s.head.next; r != &s.head; r = r.next {
		if r.bodyOut.Load() && !r.stream && r.ctx.Err() != nil {
			ended = append(ended, r)
		}
	}
	s.mu.Unlock()
	for _, r := range ended {
		r.end(r.why(context.Cause(r.ctx)))
	}
}

// visit returns the requests in flight.
func (l *requestList) visit() []*request {
	var out []*request
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for r := s.head.next; r != &s.head; r = r.next {
			out = append(out, r)
		}
		s.mu.Unlock()
	}
	return out
}

// close refuses further requests and returns those in flight.
func (l *requestList) close() []*request {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
	}
	return l.visit()
}
