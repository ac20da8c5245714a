package httpfx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"
)

// Observer receives what happens in the client and transport httpfx built, for metrics, traces
// and logs: each request of the owned client and of the upstream clients, when it starts and
// when it finishes, and each connection of the owned transport, when it opens, carries a
// request, goes idle and closes. Give observers to the Module through the value group
// "httpfx.observers", or to New through Params.Observers.
//
// httpfx calls an Observer synchronously, on the goroutine where the event happens (the
// caller's, a context's, or stop's), from many goroutines at once: its methods must be safe
// for concurrent use, return quickly and never block. Events are passed by value and hold no
// reference to the request, its body or the connection. Requests refused with ErrClosed after
// stop are not observed; Stats counts them.
//
// With no Observer, httpfx adds nothing per request: no allocation, no clock read. With one,
// each request costs two clock reads, an httptrace hook (which tells which connection the
// request got and whether it was reused) and five allocations, plus the observers' own
// work.
type Observer interface {
	// RequestStarted is called once a request is admitted, before anything is sent. Only the
	// fields that describe the request (Method to Upstream) are set.
	RequestStarted(RequestEvent)

	// RequestFinished is called once for each request RequestStarted saw, when it finishes:
	// its response body closed, read to EOF or failed, its context ended, cut at stop, or
	// the round trip failed. It is called before the request leaves the drain, so stop
	// returns only after the last one.
	RequestFinished(RequestEvent)

	// ConnChanged is called when a connection of the owned transport opens, starts or stops
	// carrying requests, and closes; see ConnEvent.
	ConnChanged(ConnEvent)
}

// RequestEvent describes one request of the owned client or of an upstream client.
// RequestStarted gets the fields that describe the request, Method to Upstream;
// RequestFinished gets them all. It is a plain value, safe to keep and to share.
type RequestEvent struct {
	Method   string // the request's method; "GET" if it was empty
	Scheme   string // the URL's scheme: "http" or "https"
	Host     string // the URL's host, without port or IPv6 brackets
	Port     int    // the URL's port, or the scheme's default (80, 443)
	Upstream string // the name of the upstream client that sent it (see Upstream); "" for the owned client

	// StatusCode is the response's status code; 0 if no response came.
	StatusCode int

	// ProtoMajor and ProtoMinor are the response's protocol version (1 and 1, or 2 and 0);
	// 0 if no response came.
	ProtoMajor, ProtoMinor int

	// Error classifies why the request failed; "" if it did not. A response of any status
	// is not a failure: its body failing or being cut is.
	Error ErrorClass

	// Err is the error the caller saw, before net/http's client wraps it in a *url.Error
	// with the URL: the round trip's, the body read's, or the context's cause; nil if the
	// request did not fail. It may name the host and port.
	Err error

	// Duration is the time from admission to finish: the round trip and the response body.
	Duration time.Duration

	// Reused reports whether the request went over a connection that had carried requests
	// before; false if it got no connection.
	Reused bool
}

// ErrorClass is the kind of error a request failed with, for metrics and logs. Its values
// are the constants below.
type ErrorClass string

// The classes of RequestEvent.Error, checked in this order.
const (
	// ErrorClosed: httpfx refused or cut the request because the client is stopping: a dial
	// after stop (ErrClosed), a request cut past the drain bound, or a connection httpfx
	// closed under the request.
	ErrorClosed ErrorClass = "closed"

	// ErrorCanceled: the request's context was canceled.
	ErrorCanceled ErrorClass = "canceled"

	// ErrorTimeout: a deadline passed: the request's context, Config.Timeout, an upstream's
	// Timeout, or a dial, TLS handshake or response header timeout.
	ErrorTimeout ErrorClass = "timeout"

	// ErrorConnection: the connection could not be made or broke: DNS, refused, reset, TLS,
	// closed by the peer.
	ErrorConnection ErrorClass = "connection"

	// ErrorOther: any other error, such as a malformed response.
	ErrorOther ErrorClass = "other"
)

// ConnEvent describes a change of one connection of the owned transport. Taken together, the
// events let an observer count connections by state: ConnOpened adds an idle one, ConnActive
// moves one from idle to active, ConnIdle back, and ConnClosed removes one that was active if
// WasActive is set, else an idle one. Events of one connection may reach an observer out of
// order when they race (a close while a request finishes), but the counts always add up.
// Reason, Age and WasActive are set for ConnClosed only. It is a plain value, safe to keep
// and to share.
type ConnEvent struct {
	Kind ConnEventKind // what happened
	Addr string        // the address dialled, "host:port": the upstream's, or the proxy's with a proxy
	Peer string        // the remote address of the connection, "ip:port"

	// Reason says why the connection closed: "closed" when net/http or the peer closed it
	// (an idle timeout, CloseIdleConnections, a broken connection), "stop" when httpfx's
	// stop closed it while still open, or one of the Retired constants when httpfx retired it
	// to keep the pool healthy. Other values may be added, one word each.
	Reason string

	// Age is how long the connection was open.
	Age time.Duration

	// WasActive reports whether the connection was carrying a request when it closed.
	WasActive bool
}

// ConnEventKind is what happened to a connection.
type ConnEventKind int

// The kinds of ConnEvent.
const (
	ConnOpened ConnEventKind = iota + 1 // dialled and added to the pool; idle until a request takes it
	ConnActive                          // it carries a request now (HTTP/2: at least one stream)
	ConnIdle                            // it carries none
	ConnClosed                          // closed
)

// String returns "opened", "active", "idle" or "closed".
func (k ConnEventKind) String() string {
	switch k {
	case ConnOpened:
		return "opened"
	case ConnActive:
		return "active"
	case ConnIdle:
		return "idle"
	case ConnClosed:
		return "closed"
	}
	return "ConnEventKind(" + strconv.Itoa(int(k)) + ")"
}

// errCut is the error of a request whose body stop cut past the drain bound.
var errCut = fmt.Errorf("%w: request cut at stop, past the drain bound", ErrClosed)

// Reasons a connection closed, see ConnEvent.Reason.
const (
	reasonClosed = "closed"
	reasonStop   = "stop"
)

// observers are the observers of one owner. A nil *observers observes nothing and costs one
// comparison per call site.
type observers struct {
	list  []Observer
	stats *Stats
	conns *connSet
}

// setObservers installs obs on o and its connections; with none, nothing is observed.
func (o *owner) setObservers(obs []Observer) {
	var list []Observer
	for _, x := range obs {
		if x != nil {
			list = append(list, x)
		}
	}
	if len(list) == 0 {
		return
	}
	o.obs = &observers{list: list, stats: o.stats, conns: &o.conns}
	o.conns.obs = o.obs
	o.stats.states.on = true
}

// connStates are the counters of Snapshot that need an observer.
type connStates struct {
	on      bool         // observed: the counters below are kept; set before use
	inUse   atomic.Int64 // connections carrying a request
	waiting atomic.Int64 // admitted requests without a connection yet
}

// fill sets s's connection states from c and s.ConnsOpen, or -1 if they are not kept.
func (c *connStates) fill(s *Snapshot) {
	if !c.on {
		s.ConnsIdle, s.ConnsInUse, s.Waiting = -1, -1, -1
		return
	}
	s.ConnsInUse = max(c.inUse.Load(), 0)
	s.ConnsIdle = max(s.ConnsOpen-s.ConnsInUse, 0)
	s.Waiting = max(c.waiting.Load(), 0)
}

// obsReq is the observation of one request.
type obsReq struct {
	s     *observers
	ev    RequestEvent
	start time.Time
	trace httptrace.ClientTrace
	conn  *trackedConn    // the connection of the owned transport the request holds; nil if none
	check *health         // health's check of the connection the request gets; nil if none
	got   bool            // GotConn came: the request no longer waits
	ctx   context.Context // the context the request was sent with; nil before its response
}

// begin starts observing a request just admitted, returning the observation, whose trace
// the request must carry (the tracker adds its own hooks to it). With no observers it
// returns nil.
func (s *observers) begin(req *http.Request, up *upstream) *obsReq {
	if s == nil {
		return nil
	}
	return s.start(req, up)
}

func (s *observers) start(req *http.Request, up *upstream) *obsReq {
	r := &obsReq{s: s, start: time.Now()}
	u := req.URL
	r.ev.Method, r.ev.Scheme, r.ev.Host = req.Method, u.Scheme, u.Hostname()
	if r.ev.Method == "" {
		r.ev.Method = http.MethodGet
	}
	r.ev.Port, _ = strconv.Atoi(u.Port())
	if r.ev.Port == 0 {
		r.ev.Port = 80
		if u.Scheme == "https" {
			r.ev.Port = 443
		}
	}
	if up != nil {
		r.ev.Upstream = up.name
	}
	r.trace.GotConn = r.gotConn
	s.stats.states.waiting.Add(1)
	for _, x := range s.list {
		x.RequestStarted(r.ev)
	}
	return r
}

// gotConn is the request's httptrace hook: it notes the connection the request got. net/http
// calls it on the request's goroutine, again if it retries on another connection.
func (r *obsReq) gotConn(info httptrace.GotConnInfo) {
	if r.check != nil {
		r.check.gotConn(info) // first, as when the two hooks were composed
	}
	if !r.got {
		r.got = true
		r.s.stats.states.waiting.Add(-1)
	}
	r.ev.Reused = info.Reused
	r.release()
	if c := r.s.owned(info.Conn); c != nil && r.s.acquire(c) {
		r.conn = c
	}
}

// release lets go of the connection the request holds, if any.
func (r *obsReq) release() {
	if c := r.conn; c != nil {
		r.conn = nil
		r.s.releaseConn(c)
	}
}

// respond records resp and returns r; nil-safe.
func (r *obsReq) respond(resp *http.Response) *obsReq {
	if r != nil {
		r.ev.StatusCode, r.ev.ProtoMajor, r.ev.ProtoMinor = resp.StatusCode, resp.ProtoMajor, resp.ProtoMinor
		if resp.Request != nil {
			r.ctx = resp.Request.Context()
		}
	}
	return r
}

// done finishes the observation with resp (nil if none came) and err (nil unless the request
// failed); nil-safe. It must be called before the request leaves the drain.
func (r *obsReq) done(resp *http.Response, err error) {
	if r == nil {
		return
	}
	if resp != nil {
		r.respond(resp)
	}
	r.finish(err)
}

// finish reports the request finished with err.
func (r *obsReq) finish(err error) {
	if !r.got {
		r.got = true
		r.s.stats.states.waiting.Add(-1)
	}
	r.release()
	r.ev.Err, r.ev.Error = err, r.classify(err)
	r.ev.Duration = time.Since(r.start)
	for _, x := range r.s.list {
		x.RequestFinished(r.ev)
	}
}

// classify returns the class of the request's err, "" for nil. A body that fails once the
// request's context ended failed because it ended, whatever net/http's error says; a
// connection that fails once stop closes the connections failed because of stop.
func (r *obsReq) classify(err error) ErrorClass {
	c := classify(err)
	switch {
	case c == "" || c == ErrorClosed:
	case r.ctx != nil && r.ctx.Err() != nil:
		c = classify(ctxEnded(r.ctx))
	case c != ErrorCanceled && c != ErrorTimeout && r.s.conns.isClosed():
		c = ErrorClosed
	}
	return c
}

// classify returns the class of err, "" for nil.
func classify(err error) ErrorClass {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrClosed):
		return ErrorClosed
	case errors.Is(err, context.Canceled):
		return ErrorCanceled
	case isTimeout(err):
		return ErrorTimeout
	case isConnError(err):
		return ErrorConnection
	}
	return ErrorOther
}

// isTimeout reports whether err is a timeout. Apart from classify, so that a request that
// went well does not allocate the net.Error that errors.As needs.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isConnError reports whether err is an error of making or keeping a connection.
func isConnError(err error) bool {
	var (
		op   *net.OpError
		dns  *net.DNSError
		cert *tls.CertificateVerificationError
		rec  tls.RecordHeaderError
		al   tls.AlertError
	)
	return errors.As(err, &op) || errors.As(err, &dns) || errors.As(err, &cert) ||
		errors.As(err, &rec) || errors.As(err, &al) || looksCut(err)
}

// ctxEnded is the error of a request whose context ended: its cause, if it says what ended
// the context (httpfx's timeouts do), else the context's error.
func ctxEnded(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil && errors.Is(c, ctx.Err()) {
		return c
	}
	return ctx.Err()
}

// Connection states. A connection's state word holds the requests it carries and connGone
// once it is closed, so that every change is one atomic step and the events of a connection
// always add up.
const connGone = 1 << 30

// connObs is the observed state of one connection of the owned transport.
type connObs struct {
	opened time.Time
	peer   string
	state  atomic.Int32
}

// owned returns the connection of the owned transport under c, or nil.
func (s *observers) owned(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*trackedConn); ok && tc.set.obs == s {
		return tc
	}
	return nil
}

// acquire counts one more request on c, reporting false if c is closed.
func (s *observers) acquire(c *trackedConn) bool {
	for {
		v := c.obs.state.Load()
		if v&connGone != 0 {
			return false
		}
		if c.obs.state.CompareAndSwap(v, v+1) {
			if v == 0 {
				s.stats.states.inUse.Add(1)
				s.conn(c, ConnActive)
			}
			return true
		}
	}
}

// releaseConn counts one request less on c.
func (s *observers) releaseConn(c *trackedConn) {
	if c.obs.state.Add(-1) == 0 {
		s.stats.states.inUse.Add(-1)
		s.conn(c, ConnIdle)
	}
}

// dialled stamps a connection just dialled, before anyone else can see it; nil-safe.
func (s *observers) dialled(c *trackedConn) {
	if s != nil {
		c.obs.opened = time.Now()
		c.obs.peer = c.RemoteAddr().String()
	}
}

// connOpened reports a connection added to the pool; nil-safe.
func (s *observers) connOpened(c *trackedConn) {
	if s != nil {
		s.conn(c, ConnOpened)
	}
}

// connClosed reports a connection closed for c.reason; nil-safe. Its closer calls it once.
func (s *observers) connClosed(c *trackedConn) {
	if s == nil {
		return
	}
	v := c.obs.state.Or(connGone)
	ev := ConnEvent{Kind: ConnClosed, Addr: c.addr, Peer: c.obs.peer, Reason: c.reason,
		Age: time.Since(c.obs.opened), WasActive: v > 0}
	if ev.WasActive {
		s.stats.states.inUse.Add(-1)
	}
	for _, x := range s.list {
		x.ConnChanged(ev)
	}
}

func (s *observers) conn(c *trackedConn, k ConnEventKind) {
	ev := ConnEvent{Kind: k, Addr: c.addr, Peer: c.obs.peer}
	for _, x := range s.list {
		x.ConnChanged(ev)
	}
}
