package httpfx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// ErrClosed is the error of every request sent through a client httpfx built once stop has
// begun: the request is refused at once, before anything is sent. It is also wrapped by the
// error of a request that stop cut past the drain bound. The client wraps it (in a
// *url.Error), so test for it with errors.Is.
var ErrClosed = errors.New("httpfx: client closed")

var (
	// errCut is the error of a request that stop cut past the drain bound.
	errCut = fmt.Errorf("%w: request cut at stop, past the drain bound", ErrClosed)

	// errDialAfterStop is the error of a dial the owned transport attempts after stop.
	errDialAfterStop = fmt.Errorf("%w: no new connection after stop", ErrClosed)
)

// timeoutError is the error of a request past one of httpfx's timeouts. Like http.Client's
// own timeout error, it is a net.Error whose Timeout reports true, and it wraps
// context.DeadlineExceeded, and the error net/http returned if there was one.
type timeoutError struct {
	what    string        // the setting that expired, such as "Config.Timeout"
	d       time.Duration // its value
	waiting string        // what the request was waiting for, if the setting bounds one wait
	err     error         // net/http's error; nil if none
}

func (e *timeoutError) Error() string {
	if e.waiting != "" {
		return fmt.Sprintf("httpfx: request exceeded %s (%v) waiting %s", e.what, e.d, e.waiting)
	}
	return fmt.Sprintf("httpfx: request exceeded %s (%v)", e.what, e.d)
}

func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

func (e *timeoutError) Unwrap() []error {
	if e.err == nil {
		return []error{context.DeadlineExceeded}
	}
	return []error{context.DeadlineExceeded, e.err}
}

var _ net.Error = (*timeoutError)(nil)

// isHeaderTimeout reports whether err is net/http's error of a request past the transport's
// ResponseHeaderTimeout, over HTTP/1.1 ("net/http: timeout awaiting response headers") or
// HTTP/2 ("http2: timeout awaiting response headers"). net/http exports no value for it: the
// text is pinned by TestResponseHeaderTimeoutErrorText on every supported Go.
func isHeaderTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && strings.HasSuffix(err.Error(), "timeout awaiting response headers")
}

// isTimeout reports whether err is a timeout.
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

// looksCut reports whether err is what a peer closing or resetting a connection looks like.
func looksCut(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
