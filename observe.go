package httpfx

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"time"
)

// observers are the Observers of one owner, and what they need to see requests. A nil
// *observers observes nothing and costs one comparison per request.
type observers struct {
	list  []Observer
	stats *Stats
	conns *connSet
}

// newObservers returns the observers of list that are not nil, or nil if there are none.
func newObservers(list []Observer, stats *Stats, conns *connSet) *observers {
	var kept []Observer
	for _, x := range list {
		if x != nil {
			kept = append(kept, x)
		}
	}
	if len(kept) == 0 {
		return nil
	}
	stats.states.on = true
	conns.obs = kept
	return &observers{list: kept, stats: stats, conns: conns}
}

// obsReq is the observation of one request: its event, and the trace that tells which
// connection it got.
type obsReq struct {
	s          *observers
	ev         RequestEvent
	start      time.Time
	trace      httptrace.ClientTrace
	conn       *conn // the connection of the owned transport the request holds; nil if none
	rewindable bool  // net/http can send the request again on another connection
	got        bool  // GotConn came: the request no longer waits
}

// begin starts observing a request just admitted, returning the observation, whose trace the
// request carries: it runs the connections' hook (connSet.gotConn) first. With no observers
// it returns nil. rewindable says whether net/http can send the request again.
func (s *observers) begin(req *http.Request, upstream string, rewindable bool) *obsReq {
	if s == nil {
		return nil
	}
	r := &obsReq{s: s, start: time.Now(), rewindable: rewindable}
	u := req.URL
	r.ev.Method, r.ev.Scheme, r.ev.Host, r.ev.Upstream = req.Method, u.Scheme, u.Hostname(), upstream
	if r.ev.Method == "" {
		r.ev.Method = http.MethodGet
	}
	r.ev.Port, _ = strconv.Atoi(portOf(u))
	r.trace.GotConn = r.gotConn
	s.stats.states.waiting.Add(1)
	for _, x := range s.list {
		x.RequestStarted(r.ev)
	}
	return r
}

// gotConn is the request's httptrace hook: it notes the connection the request got. net/http
// calls it on the request's goroutine, again if it sends the request on another connection.
func (r *obsReq) gotConn(info httptrace.GotConnInfo) {
	r.s.conns.gotConn(info, r.rewindable) // first: it may retire the connection
	if !r.got {
		r.got = true
		r.s.stats.states.waiting.Add(-1)
	}
	r.ev.Reused = info.Reused
	r.release()
	if c := r.s.conns.connOf(info.Conn); c != nil && r.s.conns.acquire(c) {
		r.conn = c
	}
}

// release lets go of the connection the request holds, if any.
func (r *obsReq) release() {
	if c := r.conn; c != nil {
		r.conn = nil
		r.s.conns.release(c)
	}
}

// respond records the response.
func (r *obsReq) respond(resp *http.Response) {
	r.ev.StatusCode, r.ev.ProtoMajor, r.ev.ProtoMinor = resp.StatusCode, resp.ProtoMajor, resp.ProtoMinor
}

// finish reports the request finished with err (nil if it went well) after attempts sends.
func (r *obsReq) finish(err error, attempts int) {
	if !r.got {
		r.got = true
		r.s.stats.states.waiting.Add(-1)
	}
	r.release()
	r.ev.Err, r.ev.Error, r.ev.Attempts = err, r.classify(err), attempts
	r.ev.Duration = time.Since(r.start)
	for _, x := range r.s.list {
		x.RequestFinished(r.ev)
	}
}

// classify returns the class of the request's err, "" for nil. A connection that fails once
// stop closed the connections failed because of stop.
func (r *obsReq) classify(err error) ErrorClass {
	c := classify(err)
	if c == ErrorConnection || c == ErrorOther {
		if r.s.conns.isClosed() {
			c = ErrorClosed
		}
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
