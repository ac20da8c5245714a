package httpfx

import (
	"strconv"
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
	// before (for a request sent more than once, the last connection); false if it got none.
	Reused bool

	// Attempts is how many times the request was sent: 1, more if httpfx sent it again (see
	// Config.Retry), 0 if it was never sent. Set for RequestFinished only.
	Attempts int
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

// ConnEvent describes a change of one connection of the owned transport. A connection is
// told once it can carry HTTP: when a request first takes it, or when a pre-warmed one's TLS
// handshake is done; one whose handshake fails is never told. Taken together, the events let
// an observer count connections by state: ConnOpened adds an idle one, ConnActive
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

	// TLS reports, for ConnOpened, whether the connection carries TLS; TLSResumed whether its
	// handshake resumed a session (an abbreviated handshake, see Config.TLSSessionCacheSize)
	// rather than a full one.
	TLS, TLSResumed bool
}

// ConnEventKind is what happened to a connection.
type ConnEventKind int

// The kinds of ConnEvent.
const (
	ConnOpened ConnEventKind = iota + 1 // dialled (and past its TLS handshake); told as a request takes it, or when pre-warmed
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
