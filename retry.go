package httpfx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// RetryConfig configures when a request is sent again. In Config it holds for the shared
// client and every upstream client; in UpstreamConfig a field that is not zero overrides it
// for that upstream (the budget fields excepted: the budget is one per origin for the whole
// pool). A request is sent again only if it is safe to: its method is idempotent (GET, HEAD,
// OPTIONS, TRACE, PUT, DELETE) or it carries an Idempotency-Key or X-Idempotency-Key header,
// and its body can be sent again (none, GetBody, or one of at most MaxBufferBytes that httpfx
// kept as it was sent). A request opts out with WithoutRetry. A request proven never to have
// reached the server is sent again whatever its method, outside these settings.
type RetryConfig struct {
	// MaxAttempts is how many times at most one request is sent, the first time included. In
	// Config, zero and 1 mean once: no retry. In UpstreamConfig, zero means Config's. Default
	// 3: the second attempt rides out a deploy's closed connections and refused dials, the
	// third a second instance restarting; more only adds load to an upstream that is failing.
	MaxAttempts int `yaml:"max_attempts" json:"max_attempts"`

	// Backoff is the base of the wait before a retry: before the nth retry httpfx waits a
	// random time up to Backoff×2^(n−1) (full jitter), at most MaxBackoff, never past the
	// request's deadline. Zero means no wait. Default 25ms.
	Backoff time.Duration `yaml:"backoff" json:"backoff"`

	// MaxBackoff bounds one wait. Zero means Backoff's bound grows unbounded (the deadline
	// still bounds it). Default 1s.
	MaxBackoff time.Duration `yaml:"max_backoff" json:"max_backoff"`

	// AttemptTimeout bounds each attempt until its response headers, so that an attempt stuck
	// on one server is given up and sent again. Zero means only the request's own Timeout and
	// ResponseHeaderTimeout bound it. Default 0.
	AttemptTimeout time.Duration `yaml:"attempt_timeout" json:"attempt_timeout"`

	// Statuses lists the response statuses that are failures worth a retry, such as 502, 503
	// and 504 (the response's body is read, up to 64 KiB, and closed first); for 429 and 503 a
	// Retry-After header, in seconds or as a date, sets the wait, up to RetryAfterMax. Empty
	// means none: only failures before any response are retried. In YAML a list, in the
	// environment "502,503,504". In UpstreamConfig, empty means Config's.
	Statuses []int `yaml:"statuses" json:"statuses"`

	// RetryAfterMax bounds the wait a Retry-After header asks for: a longer one is not waited
	// for, and the response is returned. Zero means Retry-After is ignored. Default 2s.
	RetryAfterMax time.Duration `yaml:"retry_after_max" json:"retry_after_max"`

	// MaxBufferBytes is the largest request body without GetBody that httpfx keeps as the
	// transport sends it, so that it can be sent again once it was read whole; nothing is read
	// ahead, so a body that streams is sent as net/http alone would. A larger body, or one the
	// transport had not read to its end when the attempt failed, is not retried. Zero means
	// none is kept. Default 65536.
	MaxBufferBytes int64 `yaml:"max_buffer_bytes" json:"max_buffer_bytes"`

	// BudgetPercent bounds the retries to one origin (scheme and host) over the last 10 seconds
	// to this share of its requests, plus BudgetPerSecond a second: a failing upstream then
	// sees at most that much extra load, however many callers and hops retry. A retry the
	// budget refuses returns the failure, wrapped (errors.Is still finds it), and is counted.
	// Default 20 (Finagle's RetryBudget), from 0 to 100. Config only.
	BudgetPercent int `yaml:"budget_percent" json:"budget_percent"`

	// BudgetPerSecond is the floor of the budget: retries a second allowed whatever the
	// requests, so that an origin with little traffic still gets its retries. Default 10.
	// Config only.
	BudgetPerSecond int `yaml:"budget_per_second" json:"budget_per_second"`
}

// maxAttemptsLimit bounds MaxAttempts.
const maxAttemptsLimit = 10

// drainLimit is how much of a response to a retried status is read before its connection is
// given back: more, and it is closed instead.
const drainLimit = 64 << 10

// maxReplays bounds how often one request that provably never reached the server is sent
// again, outside the retry budget: each time, the pool had handed it a connection the server
// had just closed.
const maxReplays = 3

// errServerClosedIdle is the text of net/http's error for a request whose pooled connection
// the server had closed before the request was written to it (it exports no value for it):
// pinned by TestServerClosedIdleErrorText on every supported Go.
const errServerClosedIdle = "http: server closed idle connection"

// noRetryKey is the context key of WithoutRetry.
type noRetryKey struct{}

// WithoutRetry returns ctx with retries off for the requests made with it: they are sent once
// (but for a request proven never to have reached the server, which is sent again).
func WithoutRetry(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetryKey{}, true)
}

// attemptKey is the context key of Attempt.
type attemptKey struct{}

// Attempt returns the attempt number of the request whose context is ctx, as a round tripper
// under httpfx's client sees it: 1 for the first send, 2 for the first retry, and so on.
func Attempt(ctx context.Context) int {
	if n, ok := ctx.Value(attemptKey{}).(int); ok {
		return n
	}
	return 1
}

// send sends req, r's request, through next, and sends it again while that is safe and worth
// it: a request proven never to have reached the server, up to maxReplays times outside the
// budget; a failure of a safe request that may be passing (RetryConfig), within its attempts,
// its deadline and its origin's budget, after a backoff. It returns the last response or error.
func (t *roundTripper) send(r *request, req *http.Request) (*http.Response, error) {
	o, pol := t.o, r.retry
	b := o.budgets.request(req.URL)
	if pol.MaxAttempts > 1 && !rewindable(req) && safeToRetry(req) {
		req = keepBody(req, pol.MaxBufferBytes)
	}
	tries, replays := 0, 0
	for {
		tries++
		r.attempts++
		resp, err := t.attempt(r, req)
		if err != nil && o.health != nil && neverSent(err) && replays < maxReplays && r.ctx.Err() == nil {
			if again, ok := rewind(req); ok {
				tries-- // never sent: it costs no attempt, and no budget
				replays++
				o.stats.replayed.Add(1)
				req = again
				continue
			}
		}
		wait, retry := r.retryable(req, resp, err, tries)
		if !retry {
			return resp, err
		}
		wait = max(wait, pol.backoff(tries))
		if deadline, ok := r.ctx.Deadline(); ok && time.Until(deadline) <= wait {
			return resp, err // no time left to retry: the last attempt says what went wrong
		}
		again, ok := rewind(req)
		if !ok {
			return resp, err
		}
		if !o.budgets.retry(b) {
			if again != req {
				again.Body.Close() // unsent
			}
			o.stats.budgetRefused.Add(1)
			if r.up != nil {
				r.up.stats.budgetRefused.Add(1)
			}
			if err != nil {
				err = fmt.Errorf("httpfx: retry budget of %s spent: %w", req.URL.Host, err)
			}
			return resp, err
		}
		if resp != nil {
			drain(resp)
			if r.cancelAttempt != nil { // the attempt that got resp, done with
				r.cancelAttempt(nil)
				r.cancelAttempt = nil
			}
		}
		if wait > 0 {
			if werr := r.sleep(wait); werr != nil {
				return nil, fmt.Errorf("%w; the last attempt: %w", werr, errAsIs(resp, err))
			}
		}
		o.stats.retries.Add(1)
		if r.up != nil {
			r.up.stats.retries.Add(1)
		}
		req = again.WithContext(context.WithValue(again.Context(), attemptKey{}, tries+1))
	}
}

// attempt sends req once. With an AttemptTimeout, the attempt has a context of its own that
// ends when the timeout passes before the response headers; the context of an attempt that got
// them lives until the request ends, since its body is read with it.
func (t *roundTripper) attempt(r *request, req *http.Request) (*http.Response, error) {
	d := r.retry.AttemptTimeout
	if d <= 0 {
		return t.next.RoundTrip(req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(d, func() { cancel(r.attemptTimeout) })
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if !timer.Stop() { // the timeout passed, before the headers or as they came
		if err == nil {
			resp.Body.Close() // its body would fail
		}
		resp, err = nil, r.attemptTimeout
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	r.cancelAttempt = cancel
	return resp, nil
}

// retryable reports whether the attempt that got resp or err is worth sending again, and the
// wait a Retry-After asks for.
func (r *request) retryable(req *http.Request, resp *http.Response, err error, tries int) (time.Duration, bool) {
	pol := r.retry
	if tries >= pol.MaxAttempts || r.ctx.Err() != nil || r.o.stopping.Load() {
		return 0, false
	}
	if err == nil && !slices.Contains(pol.Statuses, resp.StatusCode) {
		return 0, false // the success path: nothing more is looked at
	}
	if !safeToRetry(req) || req.Context().Value(noRetryKey{}) != nil {
		return 0, false
	}
	if err != nil {
		return 0, errors.Is(err, r.attemptTimeout) || failurePassing(err)
	}
	if pol.RetryAfterMax <= 0 || resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0, true // Retry-After ignored, or not one that carries it
	}
	wait, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now())
	if !ok {
		return 0, true
	}
	if wait > pol.RetryAfterMax {
		return 0, false // longer than the caller would want to wait: the response says why
	}
	return wait, true
}

// safeToRetry reports whether req may be sent again once it may have reached the server: its
// method is idempotent (RFC 9110 §9.2.2), or it carries an idempotency key, as net/http
// itself decides for its own retries.
func safeToRetry(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// failurePassing reports whether err, a failure before any response, may pass if the request
// is sent again: a connection refused, reset or closed, a dial that timed out, a TLS
// connection cut. Not so: the request's own deadline or cancellation, stop, a wait for
// response headers that timed out (the server has the request), a certificate the client
// rejects, a name that does not resolve.
func failurePassing(err error) bool {
	var dns *net.DNSError
	var op *net.OpError
	switch {
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case isHeaderTimeout(err):
		return false
	case errors.As(err, &dns):
		return dns.IsTemporary
	case looksCut(err):
		return true
	case errors.As(err, &op):
		return op.Op == "dial" || op.Op == "read" || op.Op == "write"
	}
	return false
}

// retryAfter parses a Retry-After value, seconds or an HTTP date, as the wait from now.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// backoff returns a random wait before the retry after attempt n: full jitter up to
// Backoff×2^(n−1), at most MaxBackoff.
func (c RetryConfig) backoff(n int) time.Duration {
	if c.Backoff <= 0 {
		return 0
	}
	ceiling := c.Backoff << min(n-1, 30)
	if ceiling <= 0 || c.MaxBackoff > 0 && ceiling > c.MaxBackoff {
		ceiling = c.MaxBackoff
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}

// sleep waits d before a retry, unless the request's context ends or stop begins: then it
// returns why.
func (r *request) sleep(d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-r.ctx.Done():
		return r.why(context.Cause(r.ctx))
	case <-r.o.gateClosed:
		return fmt.Errorf("%w: stopped before the request could be sent again", ErrClosed)
	}
}

// errAsIs returns err, or an error saying resp's status.
func errAsIs(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("status %d", resp.StatusCode)
}

// drain reads what is left of resp's body, up to drainLimit, so that its connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, drainLimit))
	resp.Body.Close()
}

// keepBody returns req with a body that keeps what the transport reads of req's, up to limit
// bytes, and a GetBody that gives it back once the transport has read it whole: a retry can
// then send it again. Nothing is read ahead of the transport, so a body that streams (an
// upload forwarded, a pipe) is read as net/http alone would, within the request's deadline.
func keepBody(req *http.Request, limit int64) *http.Request {
	if limit <= 0 || req.ContentLength > limit {
		return req
	}
	k := &keptBody{body: req.Body, limit: limit}
	r := *req
	r.Body = k
	r.GetBody = k.again
	return &r
}

// keptBody passes a request body through and keeps what is read of it, up to limit bytes.
// The transport may still read it while a retry asks for it again, hence the lock.
type keptBody struct {
	body  io.ReadCloser
	limit int64

	mu    sync.Mutex
	kept  []byte
	whole bool // read to io.EOF within limit
	over  bool // past limit: not kept
}

func (k *keptBody) Read(p []byte) (int, error) {
	n, err := k.body.Read(p)
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.over:
	case int64(len(k.kept)+n) > k.limit:
		k.over, k.kept = true, nil
	default:
		k.kept = append(k.kept, p[:n]...)
		k.whole = err == io.EOF
	}
	return n, err
}

func (k *keptBody) Close() error { return k.body.Close() }

// again returns the body, to send again, if it was read whole.
func (k *keptBody) again() (io.ReadCloser, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.whole {
		return nil, errNotKept
	}
	return io.NopCloser(bytes.NewReader(k.kept)), nil
}

// errNotKept says a body without GetBody cannot be sent again: the transport did not read it
// whole, or it is longer than MaxBufferBytes.
var errNotKept = errors.New("httpfx: the request body was not read whole before the failure, or is longer than retry.max_buffer_bytes: it cannot be sent again")

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

// validate reports the problems of c, naming its fields after prefix ("Retry", or an
// upstream's); budget says whether the budget's fields may be set (Config's only).
func (c RetryConfig) validate(prefix string, budget bool) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("httpfx: config: %s.%s %s", prefix, field, fmt.Sprintf(format, args...)))
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > maxAttemptsLimit {
		bad("MaxAttempts", "is %d: want 1 (no retry) to %d", c.MaxAttempts, maxAttemptsLimit)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Backoff", c.Backoff}, {"MaxBackoff", c.MaxBackoff}, {"AttemptTimeout", c.AttemptTimeout}, {"RetryAfterMax", c.RetryAfterMax}} {
		switch {
		case d.v < 0:
			bad(d.name, "is %v: want zero (none) or a positive duration", d.v)
		case d.v > maxDuration:
			bad(d.name, "is %v: want at most %v (ten years)", d.v, maxDuration)
		}
	}
	for _, code := range c.Statuses {
		if code < 400 || code > 599 {
			bad("Statuses", "has %d: want statuses of failures, from 400 to 599", code)
		}
	}
	if c.MaxBufferBytes < 0 {
		bad("MaxBufferBytes", "is %d: want zero (none) or a positive number of bytes", c.MaxBufferBytes)
	}
	switch {
	case !budget && (c.BudgetPercent != 0 || c.BudgetPerSecond != 0):
		bad("BudgetPercent", "and BudgetPerSecond are set: the retry budget is one per origin for the whole pool; set it in Config.Retry")
	case c.BudgetPercent < 0 || c.BudgetPercent > 100:
		bad("BudgetPercent", "is %d: want 0 to 100", c.BudgetPercent)
	case c.BudgetPerSecond < 0:
		bad("BudgetPerSecond", "is %d: want zero or a positive number", c.BudgetPerSecond)
	}
	return errors.Join(errs...)
}

// overlay returns c with the fields that o sets, but the budget's.
func (c RetryConfig) overlay(o RetryConfig) RetryConfig {
	if o.MaxAttempts != 0 {
		c.MaxAttempts = o.MaxAttempts
	}
	if o.Backoff != 0 {
		c.Backoff = o.Backoff
	}
	if o.MaxBackoff != 0 {
		c.MaxBackoff = o.MaxBackoff
	}
	if o.AttemptTimeout != 0 {
		c.AttemptTimeout = o.AttemptTimeout
	}
	if len(o.Statuses) != 0 {
		c.Statuses = o.Statuses
	}
	if o.RetryAfterMax != 0 {
		c.RetryAfterMax = o.RetryAfterMax
	}
	if o.MaxBufferBytes != 0 {
		c.MaxBufferBytes = o.MaxBufferBytes
	}
	return c
}
