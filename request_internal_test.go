package httpfx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recObserver records finished requests.
type recObserver struct {
	mu  sync.Mutex
	evs []RequestEvent
}

func (r *recObserver) RequestStarted(RequestEvent) {}
func (r *recObserver) RequestFinished(e RequestEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}
func (r *recObserver) ConnChanged(ConnEvent) {}

// A body cut by its server is a connection error: the request context's own cancellation at
// the end does not make it look canceled.
func TestBodyErrorClass(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	defer srv.Close()
	rec := new(recObserver)
	client := newObservedClient(t, DefaultConfig(), rec)
	resp, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.evs) != 1 || rec.evs[0].Error != ErrorConnection {
		t.Errorf("events %+v, want one classified %q", rec.evs, ErrorConnection)
	}
}

// An upstream request that stop refuses between admission and listing is counted out of its
// upstream once, and never waits for a MaxConnsPerHost slot it did not take.
func TestUpstreamRequestRefusedAtListing(t *testing.T) {
	t.Parallel()
	res, err := New(Params{Config: DefaultConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	o := ownerOf(res.Client)
	uc, err := o.newUpstream("svc", UpstreamConfig{BaseURL: "http://127.0.0.1:1/", MaxConnsPerHost: 2})
	if err != nil {
		t.Fatal(err)
	}
	o.requests.close() // as stop's cut does while a request is between admission and listing
	done := make(chan error, 1)
	go func() {
		_, err := uc.Get("x")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("err = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request hangs")
	}
	if u := o.stats.Snapshot().Upstreams["svc"]; u.Requests != 1 || u.InFlight != 0 || u.Failed != 1 {
		t.Errorf("upstream stats %+v, want 1 request, 1 failed, none in flight", u)
	}
}

// A request waiting for an upstream's MaxConnsPerHost slot is bounded by its Timeout even
// when nothing else in flight has a deadline of its own.
func TestUpstreamSlotWaitBoundedByTimeout(t *testing.T) {
	t.Parallel()
	srv := newStallingServer(t)
	cfg := DefaultConfig()
	cfg.ResponseHeaderTimeout = 0
	res, err := New(Params{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	o := ownerOf(res.Client)
	uc, err := o.newUpstream("svc", UpstreamConfig{BaseURL: srv.URL + "/", Timeout: 300 * time.Millisecond, MaxConnsPerHost: 1})
	if err != nil {
		t.Fatal(err)
	}
	// A: its caller's deadline is shorter than the Timeout, so it has none of its own; it
	// keeps its slot, its body unread.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	reqA, _ := http.NewRequestWithContext(ctx, http.MethodGet, "a", nil)
	respA, err := uc.Do(reqA)
	if err != nil {
		t.Fatal(err)
	}
	defer respA.Body.Close()
	done := make(chan error, 1)
	go func() {
		_, err := uc.Get("b")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), `upstream "svc" Timeout (300ms)`) {
			t.Errorf("err = %v, want the upstream's Timeout", err)
		}
	case <-time.After(10 * time.Second):
		respA.Body.Close()
		<-done
		t.Error("B waited for a slot past its Timeout")
	}
	respA.Body.Close()
	if err := Shutdown(context.Background(), res.Client); err != nil {
		t.Fatal(err)
	}
}

// Many upstream requests time out while waiting for a slot and while waiting for headers,
// concurrently with the sweeper: run with -race.
func TestUpstreamTimeoutsUnderRace(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer srv.Close()
	defer srv.CloseClientConnections()
	res, err := New(Params{Config: DefaultConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	uc, err := ownerOf(res.Client).newUpstream("svc", UpstreamConfig{BaseURL: srv.URL + "/", Timeout: 20 * time.Millisecond, MaxConnsPerHost: 1})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := uc.Get("x"); err == nil {
				t.Error("a request succeeded; want its Timeout")
			}
		}()
		time.Sleep(200 * time.Microsecond)
	}
	wg.Wait()
}

// The context of a request never changes its Err once set: a caller's cancellation stays
// Canceled even when the request's Timeout passes afterwards.
func TestRequestContextErrIsStable(t *testing.T) {
	t.Parallel()
	srv := newStallingServer(t)
	cfg := DefaultConfig()
	cfg.Timeout = 200 * time.Millisecond
	res, err := New(Params{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := res.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rctx := resp.Request.Context()
	cancel()
	e1 := rctx.Err()
	time.Sleep(400 * time.Millisecond) // past the Timeout
	if e2 := rctx.Err(); e1 != context.Canceled || e2 != e1 {
		t.Errorf("Err was %v, then %v; want Canceled both times", e1, e2)
	}
}

// newStallingServer starts a server whose responses send their headers and a part of the body,
// then stall until the client goes away. The test's cleanup closes it.
func newStallingServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(srv.CloseClientConnections) // first: handlers wait for their clients
	return srv
}

// A body its caller leaves unread past the Timeout is failed when its caller reads it, or
// when stop looks at it; the observer sees the response's status and a timeout (and -race sees
// no race between the response's record and the finish).
func TestObserverSeesBodyTimeout(t *testing.T) {
	t.Parallel()
	srv := newStallingServer(t)
	rec := new(recObserver)
	cfg := DefaultConfig()
	cfg.Timeout = 100 * time.Millisecond
	res, err := New(Params{Config: cfg, Observers: []Observer{rec}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := res.Client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // past the Timeout, the body unread
	if err := Shutdown(context.Background(), res.Client); err != nil {
		t.Errorf("stop: %v; want nil: the request was over", err)
	}
	resp.Body.Close()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.evs) != 1 || rec.evs[0].StatusCode != http.StatusOK || rec.evs[0].Error != ErrorTimeout {
		t.Errorf("finished %+v; want one with status 200 and class %q", rec.evs, ErrorTimeout)
	}
}

// A request whose deadline passes while it leads the HTTP/2 cold-start gate hands the lead
// on: after bursts of HTTPS requests that all time out against a server that never answers,
// no leader is left behind to hold the next requests to the host.
func TestGateLeadHandedOnWhenTheDeadlinePasses(t *testing.T) {
	t.Parallel()
	addr := holdingListener(t)
	cfg := DefaultConfig()
	cfg.Timeout = 100 * time.Millisecond
	res, err := New(Params{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	o := ownerOf(res.Client)
	url := "https://" + addr + "/"
	for round := range 20 {
		var wg sync.WaitGroup
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if resp, err := res.Client.Get(url); err == nil {
					resp.Body.Close()
				}
			}()
		}
		wg.Wait()
		o.gate.mu.Lock()
		n := len(o.gate.leading)
		o.gate.mu.Unlock()
		if n > 0 {
			t.Fatalf("round %d: every request returned, yet the gate still has %d leader(s)", round, n)
		}
	}
}

// newObservedClient builds a client with cfg, observed by obs; the test's cleanup stops it.
func newObservedClient(t *testing.T, cfg Config, obs Observer) *http.Client {
	t.Helper()
	res, err := New(Params{Config: cfg, Observers: []Observer{obs}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Shutdown(context.Background(), res.Client) })
	return res.Client
}

// A request carries one trace with every hook it needs: health's check of the connection and
// the observation's, and a caller's own trace still runs too.
func TestOneTraceRunsEveryHook(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) }))
	defer srv.Close()
	tests := []struct {
		give       string
		body       bool // a POST with a rewindable body
		callerHook bool // the caller's context has an httptrace of its own
	}{
		{give: "GET"},
		{give: "POST", body: true},
		{give: "GET with the caller's trace", callerHook: true},
		{give: "POST with the caller's trace", body: true, callerHook: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			rec := new(recObserver)
			res, err := New(Params{Config: DefaultConfig(), Observers: []Observer{rec}})
			if err != nil {
				t.Fatal(err)
			}
			defer Shutdown(context.Background(), res.Client)
			o := ownerOf(res.Client)
			var callerSaw []bool
			for range 2 {
				ctx := context.Background()
				if tt.callerHook {
					ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
						GotConn: func(info httptrace.GotConnInfo) { callerSaw = append(callerSaw, info.Reused) }})
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
				if tt.body {
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader("x"))
				}
				resp, err := res.Client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			rec.mu.Lock()
			evs := slices.Clone(rec.evs)
			rec.mu.Unlock()
			if len(evs) != 2 || evs[0].Reused || !evs[1].Reused {
				t.Errorf("observer saw %+v; want a new connection, then it reused", evs)
			}
			o.conns.mu.Lock()
			for c := range o.conns.conns {
				if c.h.proto.Load() != protoH1 {
					t.Errorf("connection's protocol %d: health's hook did not run", c.h.proto.Load())
				}
			}
			o.conns.mu.Unlock()
			if tt.callerHook && !slices.Equal(callerSaw, []bool{false, true}) {
				t.Errorf("the caller's hook saw %v, want [false true]", callerSaw)
			}
		})
	}
}

// To a host the cold-start gate knows speaks HTTP/2 (no gate), a deadline that passes at once
// races net/http: every request fails with the timeout, none hangs.
func TestKnownHTTP2HostRacingTheRoundTrip(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	defer srv.CloseClientConnections() // first: the handlers wait for their connection's end
	cfg := DefaultConfig()
	cfg.Timeout = time.Millisecond
	sent := 0
	res, err := New(Params{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	o := ownerOf(res.Client)
	res.Transport.TLSClientConfig.RootCAs = x509.NewCertPool() // before first use
	res.Transport.TLSClientConfig.RootCAs.AddCert(srv.Certificate())
	host := strings.TrimPrefix(srv.URL, "https://")
	known := map[string]struct{}{host: {}} // as the gate learns it from a first connection
	o.gate.known.Store(&known)
	for range 30 {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		done := make(chan error, 1)
		go func() {
			_, err := res.Client.Do(req)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "Config.Timeout (1ms)") {
				t.Fatalf("err = %v, want Config.Timeout", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a request past its 1ms Timeout hangs")
		}
		sent++
	}
	if s := res.Stats.Snapshot(); s.InFlight != 0 || s.Failed != int64(sent) {
		t.Errorf("in flight %d, failed %d; want 0 and %d", s.InFlight, s.Failed, sent)
	}
}

// holdingListener returns the address of a listener that accepts connections and never
// answers (no TLS handshake completes), until the test ends.
func holdingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	held.Add(1)
	go func() { // accept and hold: no TLS handshake ever completes
		defer held.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); held.Wait() })
	return ln.Addr().String()
}

// A request waiting behind the cold-start gate's leader (its context wrapped by the
// certificate hint) that a deadline or stop ends says which.
func TestGateWaitEndsWithItsCause(t *testing.T) {
	t.Parallel()
	addr := holdingListener(t)
	url := "https://" + addr + "/"
	tests := []struct {
		give     string
		timeout  time.Duration // the waiting request's upstream Timeout
		stop     bool          // stop cuts the wait
		wantText string
	}{
		{give: "timeout", timeout: 200 * time.Millisecond, wantText: `upstream "svc" Timeout (200ms)`},
		{give: "cut at stop", timeout: 10 * time.Second, stop: true, wantText: "client closed"},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Timeout, cfg.ResponseHeaderTimeout = 0, 0
			res, err := New(Params{Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			defer Shutdown(context.Background(), res.Client)
			o := ownerOf(res.Client)
			uc, err := o.newUpstream("svc", UpstreamConfig{BaseURL: url, Timeout: tt.timeout})
			if err != nil {
				t.Fatal(err)
			}
			lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer lcancel()
			lreq, _ := http.NewRequestWithContext(lctx, http.MethodGet, url, nil)
			ldone := make(chan struct{})
			go func() { // the leader, stuck in its TLS handshake
				defer close(ldone)
				if resp, err := res.Client.Do(lreq); err == nil {
					resp.Body.Close()
				}
			}()
			defer func() { lcancel(); <-ldone }()
			pollUntil(t, "a leader of the gate", func() bool {
				o.gate.mu.Lock()
				defer o.gate.mu.Unlock()
				return o.gate.leading[addr] != nil
			})
			errc := make(chan error, 1)
			go func() {
				resp, err := uc.Get("x")
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			if tt.stop {
				pollUntil(t, "the follower in flight", func() bool { return res.Stats.Snapshot().InFlight == 2 })
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				Shutdown(ctx, res.Client)
			}
			select {
			case err = <-errc:
			case <-time.After(10 * time.Second):
				t.Fatal("the request waiting at the gate hangs")
			}
			var te *timeoutError
			if err == nil || !strings.Contains(err.Error(), tt.wantText) || tt.stop != errors.Is(err, ErrClosed) || !tt.stop != errors.As(err, &te) {
				t.Errorf("err = %v; want it to say %q", err, tt.wantText)
			}
		})
	}
}

// pollUntil waits up to 10s for cond, polling.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A transport that speaks only HTTP/1.1 over TLS (here made so by a decorator, not Config)
// has no cold-start gate: a request is not held behind another whose handshake hangs.
func TestHTTP1OnlyTLSIsNotGated(t *testing.T) {
	t.Parallel()
	addr := holdingListener(t)
	url := "https://" + addr + "/"
	cfg := DefaultConfig()
	cfg.Timeout, cfg.ResponseHeaderTimeout, cfg.TLSHandshakeTimeout = 0, 0, 5*time.Second
	o, err := newOwner(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	o.transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // as a decorator may
	client := o.newClient(o.transport, o.transport)
	defer Shutdown(context.Background(), client)
	res := Result{Client: client, Stats: o.stats}
	if o.gate != nil {
		t.Fatal("a cold-start gate for a transport without HTTP/2")
	}
	lead, err := o.newUpstream("lead", UpstreamConfig{BaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := o.newUpstream("svc", UpstreamConfig{BaseURL: url, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	lreq, _ := http.NewRequestWithContext(lctx, http.MethodGet, "x", nil)
	ldone := make(chan struct{})
	go func() { // stuck in its TLS handshake
		defer close(ldone)
		if resp, err := lead.Do(lreq); err == nil {
			resp.Body.Close()
		}
	}()
	defer func() { lcancel(); <-ldone }()
	pollUntil(t, "the first request in flight", func() bool { return res.Stats.Snapshot().InFlight == 1 })
	began := time.Now()
	resp, err := svc.Get("x")
	if err == nil {
		resp.Body.Close()
	}
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), `upstream "svc" Timeout (200ms)`) || took > 2*time.Second {
		t.Errorf("after %v: err = %v; want the upstream's 200ms Timeout", took, err)
	}
}

// closeCounter counts the Closes of a response body.
type closeCounter struct {
	io.Reader
	closes int
}

func (c *closeCounter) Close() error { c.closes++; return nil }

// A response that net/http hands back after the request's context ended (it raced the
// cancellation, and may be the server's reaction to it: a handler cut short answers with what
// it had) is the request's failure, with its context's cause; its body is closed.
func TestResponseRacingTheDeadlineFails(t *testing.T) {
	t.Parallel()
	o, err := newOwner(DefaultConfig(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	timeout := &timeoutError{what: "Config.Timeout", d: time.Millisecond}
	ctx, cancel := context.WithDeadlineCause(context.Background(), time.Now().Add(-time.Second), timeout)
	defer cancel()
	seq, ok := o.admit()
	if !ok {
		t.Fatal("not admitted")
	}
	r := &request{o: o, parent: context.Background(), ctx: ctx, cancel: cancel, timeout: timeout}
	r.body.r = r
	if !o.requests.add(r, seq) {
		t.Fatal("request refused")
	}
	req := httptest.NewRequest(http.MethodGet, "http://svc.test/", nil)
	body := &closeCounter{Reader: strings.NewReader("")}
	resp := &http.Response{StatusCode: http.StatusOK, Body: body, ContentLength: 0, Header: http.Header{}, Request: req}
	got, err := r.respond(req, resp, nil)
	if got != nil || !errors.Is(err, timeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("respond: %v, %v; want no response and the Timeout", got, err)
	}
	if body.closes != 1 {
		t.Errorf("the response body was closed %d times, want once", body.closes)
	}
	if s := o.stats.Snapshot(); s.InFlight != 0 || s.Failed != 1 {
		t.Errorf("in flight %d, failed %d; want 0 and 1", s.InFlight, s.Failed)
	}
}
