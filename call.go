package httpfx

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// call is one request through the owned client, from admission until it is finished: its
// round trip failed, or its response body was closed, read to EOF or failed, or its context
// ended. It is three things in one allocation: the request's context as net/http sees it
// (the caller's, passed through), the request's entry in the list of requests in flight, where
// the sweeper enforces its deadlines, and the wrapper of its response body. It is safe for
// concurrent use: the caller's goroutine, net/http's and the sweeper touch it.
//
// The deadlines are enforced without a timer or a context of their own per request, which
// cost net/http ten allocations: the sweeper looks through the calls in flight (sweeper.go).
// A call past a deadline is failed one of three ways, the cheapest that can reach the request:
//
//   - The fast mode, for HTTP/1.1 sent straight to an *http.Transport (plain HTTP, or HTTPS
//     when the transport has HTTP/2 off): the sweeper has the transport cancel the request,
//     and the context stays the caller's. No allocation.
//   - The own mode, for the rest sent straight to an *http.Transport (HTTPS that may be
//     HTTP/2) under a caller's context that never ends: c is itself the cancellable context.
//     Its Done channel is made when first asked for, and net/http's per-request context
//     registers with it (AfterFunc) rather than with a context of context's own: one to three
//     allocations.
//   - The cancel mode otherwise (a wrapped round tripper, which may wrap the context too, or a
//     caller's context that can end): a context of context's own over the caller's, which
//     context links to the caller's and net/http's without a goroutine. Five allocations.
//
// A cancelled context has the timeout as its cause. Once the response headers are in, every
// way the sweeper closes the response body under the caller.
type call struct {
	prev, next *call      // in its shard of owner.calls while listed
	shard      *callShard // nil until listed

	o      *owner
	up     *upstream               // the upstream client that sent it; nil for the owned client
	inner  context.Context         // what the context methods answer from: the caller's context, with health's trace
	cancel context.CancelCauseFunc // the cancel mode's: cancels inner; nil in the other modes, or without deadlines
	req    atomic.Pointer[http.Request]

	endBy   int64        // on the owner's clock, when the whole request expires; zero: never
	hdrBy   atomic.Int64 // when the wait for the response headers expires; zero: never; negative: not counting yet
	phase   atomic.Int32 // phaseHeaders, ...
	dialing atomic.Int32 // dials started for it and not finished: its header clock waits

	returned atomic.Bool // the round trip has returned
	done     atomic.Bool // end has run
	slot     bool        // it holds one of its upstream's MaxConnsPerHost slots
	fast     bool        // the fast mode: the owner's tracker's transport cancels the request
	own      bool        // the own mode: c is the cancellable context (ownctx.go)
	made     atomic.Bool // the own mode's: ch is made
	ended    bool        // the own mode's: the context was cancelled (guarded by mu); its cause is failure()

	// The own mode's, guarded by mu: the channel Done returns, made when first asked for, and
	// what AfterFunc registered, run at cancellation.
	mu    sync.Mutex
	ch    chan struct{}
	after func()
	more  *[]*func()

	tr    *httptrace.ClientTrace // the trace the call answers httptrace's key with; nil: inner answers
	rc    io.ReadCloser          // the response body, once there is one
	watch context.Context        // the caller's context, if its end finishes the request; set before phaseBody
	obs   *obsReq                // the request's observation; nil unless observed
	body  body                   // the wrapper of rc that the caller reads
}

// Phases of a call. A call moves from phaseHeaders to one other phase, from phaseBody and
// phaseStream to a phase "in body" or phaseDone; the phases from phaseHeaderTimeout to
// phaseCutInBody are failures by a deadline or stop, which stay once set.
const (
	phaseHeaders         int32 = iota // the round trip is running
	phaseBody                         // the response body is being read
	phaseStream                       // a 101 stream: no deadline applies
	phaseHeaderTimeout                // ResponseHeaderTimeout expired during the round trip
	phaseTimeoutInHeader              // the request's Timeout expired during the round trip
	phaseTimeoutInBody                // the request's Timeout expired while the body was read
	phaseCutInHeader                  // stop cut it during the round trip
	phaseCutInBody                    // stop cut it while the body was read
	phaseDone                         // finished well, or failed other than by a deadline or stop
)

// hdrBy of a request whose header clock has not started: one with a body starts it when its
// write ends, one without when it is handed to the transport, after any wait of httpfx's
// (an upstream's MaxConnsPerHost, the HTTP/2 cold-start gate).
const (
	hdrAfterWrite = -1
	hdrAtSend     = -2
)

// callKey is the context key under which a call finds itself, from a dial made for it.
type callKey struct{}

var _ context.Context = (*call)(nil)

// Deadline implements context.Context. In the own and cancel modes it includes the call's own
// deadline, at which Done closes.
func (c *call) Deadline() (time.Time, bool) {
	d, ok := c.inner.Deadline()
	if (c.cancel != nil || c.own) && c.endBy != 0 {
		if by := c.o.clock.at(c.endBy); !ok || by.Before(d) {
			return by, true
		}
	}
	return d, ok
}

// Done implements context.Context.
func (c *call) Done() <-chan struct{} {
	if c.own {
		return c.ownDone()
	}
	return c.inner.Done()
}

// Err implements context.Context. In the own and cancel modes, a context that a deadline
// ended reports context.DeadlineExceeded, as its cause (the timeout's error) says.
func (c *call) Err() error {
	if c.own {
		return c.ownErr()
	}
	err := c.inner.Err()
	if err == context.Canceled && c.cancel != nil {
		var te *timeoutError
		if errors.As(context.Cause(c.inner), &te) {
			return context.DeadlineExceeded
		}
	}
	return err
}

// Value implements context.Context.
func (c *call) Value(key any) any {
	if key == (callKey{}) {
		return c
	}
	if c.tr != nil && key == c.o.traceKey {
		return c.tr
	}
	return c.inner.Value(key)
}

// withTrace makes ctx's requests carry trace: c answers httptrace's key itself, if it could
// be found (probeTraceKey) and ctx has no trace that httptrace would have to compose with
// trace; else ctx gets a context of httptrace's own, one allocation more. trace must not be
// shared in the second case, where httptrace adds ctx's hooks to it.
func (c *call) withTrace(ctx context.Context, trace *httptrace.ClientTrace) context.Context {
	if c.o.traceKey != nil && httptrace.ContextClientTrace(ctx) == nil {
		c.tr = trace
		return ctx
	}
	return httptrace.WithClientTrace(ctx, trace)
}

// probeTraceKey returns the context key under which httptrace finds a request's trace, so
// that a call can answer it without a context of httptrace's own per request, or nil if the
// key cannot be found or answered that way. It asks httptrace once, and checks the answer.
func probeTraceKey() any {
	p := &keyProbe{Context: context.Background()}
	httptrace.ContextClientTrace(p)
	if p.key == nil || !reflect.TypeOf(p.key).Comparable() {
		return nil
	}
	want := new(httptrace.ClientTrace)
	if httptrace.ContextClientTrace(&keyProbe{Context: context.Background(), key: p.key, answer: want}) != want {
		return nil
	}
	return p.key
}

// keyProbe records the first key it is asked for, and answers key with answer.
type keyProbe struct {
	context.Context
	key    any
	answer *httptrace.ClientTrace
}

func (p *keyProbe) Value(k any) any {
	if p.key == nil {
		p.key = k
		return nil
	}
	if p.answer != nil && k == p.key {
		return p.answer
	}
	return p.Context.Value(k)
}

// callOf returns the call ctx belongs to, or nil.
func callOf(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// failure returns the error of a call that failed by a deadline or stop, or nil.
func (c *call) failure() error {
	switch c.phase.Load() {
	case phaseHeaderTimeout:
		return c.o.headerTimeoutErr
	case phaseTimeoutInHeader, phaseTimeoutInBody:
		if c.up != nil {
			return c.up.timeoutErr
		}
		return c.o.timeoutErr
	case phaseCutInHeader, phaseCutInBody:
		return errCut
	}
	return nil
}

// wroteRequest is the trace hook of a request with a body: the wait for the response headers
// starts once the request is written. It runs again if net/http writes the request again.
func (c *call) wroteRequest(httptrace.WroteRequestInfo) {
	c.hdrBy.Store(c.o.clock.now() + int64(c.o.cfg.ResponseHeaderTimeout))
}

// dialStarted and dialEnded bracket a dial made for the call (conns.go): the time spent
// connecting is not waiting for headers, so the header clock waits and starts again after.
func (c *call) dialStarted() { c.dialing.Add(1) }

func (c *call) dialEnded() {
	if c.dialing.Add(-1) == 0 {
		if by := c.hdrBy.Load(); by > 0 {
			c.hdrBy.CompareAndSwap(by, max(by, c.o.clock.now()+int64(c.o.cfg.ResponseHeaderTimeout)))
		}
	}
}

// expired returns the phase a call in phase p moves to at now on the owner's clock, or p if
// no deadline of it has passed.
func (c *call) expired(p int32, now int64) int32 {
	switch p {
	case phaseHeaders:
		if c.endBy != 0 && now >= c.endBy {
			return phaseTimeoutInHeader
		}
		if by := c.hdrBy.Load(); by > 0 && now >= by && c.dialing.Load() == 0 {
			return phaseHeaderTimeout
		}
	case phaseBody:
		if c.endBy != 0 && now >= c.endBy {
			return phaseTimeoutInBody
		}
	}
	return p
}

// fail moves the call from phase from to phase to, if it is still in from, and makes it fail:
// during the round trip, net/http is told to stop it; during the body, the body is closed
// under the caller and the request is finished.
func (c *call) fail(from, to int32) {
	if !c.phase.CompareAndSwap(from, to) {
		return
	}
	if from == phaseHeaders {
		c.stopRoundTrip()
		return
	}
	c.cancelContext(c.failure()) // first: the context says why before a Read can see the close
	c.rc.Close()                 // set before the phase moved to phaseBody
	c.end(c.failure())
}

// stopRoundTrip makes the running round trip of a failed call return. In the fast mode the
// transport cancels it (Transport.CancelRequest, which net/http keeps for HTTP/1.1: it finds
// the request by the pointer it was given); the sweeper repeats it until the round trip
// returns, because a cancellation that comes before net/http has registered the request does
// nothing.
func (c *call) stopRoundTrip() {
	switch {
	case c.returned.Load():
	case c.cancel != nil || c.own:
		c.cancelContext(c.failure())
	case c.fast:
		if r := c.req.Load(); r != nil {
			c.o.tracker.transport.CancelRequest(r) //nolint:staticcheck // the fast mode's cancellation, see call
		}
	}
}

// cut is stop's: it fails the call under the caller, who may never close its body, so that
// net/http lets go of the connection and goroutines.
func (c *call) cut() {
	for {
		switch p := c.phase.Load(); p {
		case phaseHeaders:
			if c.phase.CompareAndSwap(p, phaseCutInHeader) {
				c.stopRoundTrip() // stop closes the connections too
				return
			}
		case phaseBody, phaseStream:
			if c.phase.CompareAndSwap(p, phaseCutInBody) {
				c.rc.Close() // set before the phase moved to phaseBody or phaseStream
				c.end(errCut)
				return
			}
		default: // failed already, or done
			return
		}
	}
}

// endsWith reports how a call whose round trip returned err (nil if it returned a response)
// ends: its phase moves out of phaseHeaders to next, or it failed by a deadline or stop and
// failure says why.
func (c *call) endsWith(next int32) bool {
	c.returned.Store(true)
	c.roundTripReturned()
	return c.phase.CompareAndSwap(phaseHeaders, next)
}

// end finishes the request once, whichever of the round trip's failure, the body's Read or
// Close, the context's end, a deadline and cut comes first; err is nil if it went well, else
// why it failed.
func (c *call) end(err error) {
	if !c.done.CompareAndSwap(false, true) {
		return
	}
	for { // a failure's phase stays: a Read after it still says why
		p := c.phase.Load()
		if p != phaseHeaders && p != phaseBody && p != phaseStream || c.phase.CompareAndSwap(p, phaseDone) {
			break
		}
	}
	c.o.calls.remove(c)
	if c.obs != nil {
		c.obs.finish(err) // before cancel: the observer classifies by the context's state
	}
	if c.cancel != nil {
		c.cancel(nil) // lets go of the caller's context; the own mode holds nothing to let go of
	}
	if c.up != nil {
		c.up.done(err != nil, c.slot)
	}
	c.o.finish(err != nil)
}

// endEarly finishes a call that never reached the transport, with err, and returns err. As a
// RoundTripper must, it closes req's body.
func (c *call) endEarly(req *http.Request, err error) error {
	c.returned.Store(true)
	closeBody(req)
	c.end(err)
	return err
}

// finishWatch finishes the request when its context ends, in a goroutine of the context's.
// Stop calls it for the calls reading their body only: the registration is left to end with
// the context.
func (c *call) finishWatch() {
	if c.phase.Load() == phaseBody && c.watch != nil {
		ctx := c.watch
		context.AfterFunc(ctx, func() { c.end(ctxEnded(ctx)) })
	}
}

// body is the response body the caller reads: the request stays in flight until it is closed,
// read to EOF or fails. It is safe for a Close concurrent with a Read, as net/http's bodies
// are.
type body struct{ c *call }

func (b *body) Read(p []byte) (int, error) {
	c := b.c
	n, err := c.rc.Read(p)
	if err != nil {
		if f := c.failure(); f != nil {
			err = f // the sweeper or stop closed it, which may read as an EOF: say why
		}
		if err == io.EOF {
			c.end(nil)
		} else {
			c.end(err)
		}
	}
	return n, err
}

func (b *body) Close() error {
	err := b.c.rc.Close()
	b.c.end(nil)
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
