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

// A call whose round trip failed, or whose response has no body, is finished: a sweep past
// its deadline or stop's cut before the tracker ends it leaves it alone (it has no body to
// close).
func TestFinishedCallIsLeftAlone(t *testing.T) {
	o, err := newOwner(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := o.admit()
	c := &call{o: o, inner: context.Background(), endBy: 1}
	c.body.c = c
	o.calls.add(c, seq)
	if !c.endsWith(phaseDone) {
		t.Fatal("endsWith refused")
	}
	o.sweep.sweep()
	for _, c := range o.calls.close() {
		c.cut()
	}
	if p := c.phase.Load(); p != phaseDone {
		t.Errorf("phase %d after a sweep and a cut, want done", p)
	}
	c.end(nil)
	if n := o.stats.gate.Load(); n != 0 {
		t.Errorf("in flight %d, want 0", n)
	}
}

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

// A body cut by its server is a connection error in both modes: the context mode's own
// cancellation at the end does not make it look canceled.
func TestBodyErrorClassInBothModes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	defer srv.Close()
	for _, mode := range []string{"fast", "own", "cancel"} {
		t.Run(mode, func(t *testing.T) {
			rec := new(recObserver)
			client := newModeClient(t, mode, DefaultConfig(), rec)
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
		})
	}
}

// An upstream request that stop refuses between admission and listing is counted out of its
// upstream once, and never waits for a MaxConnsPerHost slot it did not take.
func TestUpstreamRequestRefusedAtListing(t *testing.T) {
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
	o.calls.close() // as stop's cut does while a request is between admission and listing
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

// A call's Err never changes once set: a caller's cancellation stays Canceled even when a
// deadline of httpfx passes afterwards.
func TestCallErrIsStable(t *testing.T) {
	srv := newStallingServer(t)
	cfg := DefaultConfig()
	cfg.Timeout = 200 * time.Millisecond
	res, err := New(Params{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	ownerOf(res.Client).tracker.fastHTTP = false // the context mode
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

// A body its caller leaves unread is failed by the sweeper past the Timeout; the observer sees
// the response's status and a timeout, in both modes (and -race sees no race between the
// response's record and the sweeper's finish).
func TestObserverSeesBodyTimeout(t *testing.T) {
	srv := newStallingServer(t)
	for _, mode := range []string{"fast", "own", "cancel"} {
		t.Run(mode, func(t *testing.T) {
			rec := new(recObserver)
			cfg := DefaultConfig()
			cfg.Timeout = 100 * time.Millisecond
			client := newModeClient(t, mode, cfg, rec)
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			deadline := time.Now().Add(10 * time.Second)
			for {
				rec.mu.Lock()
				n := len(rec.evs)
				rec.mu.Unlock()
				if n > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the request was never finished")
				}
				time.Sleep(5 * time.Millisecond)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if e := rec.evs[0]; e.StatusCode != http.StatusOK || e.Error != ErrorTimeout {
				t.Errorf("finished with status %d, class %q; want 200 and %q", e.StatusCode, e.Error, ErrorTimeout)
			}
		})
	}
}

// A request whose deadline passes while it leads the HTTP/2 cold-start gate hands the lead
// on: after bursts of HTTPS requests that all time out against a server that never answers,
// no leader is left behind to hold the next requests to the host.
func TestGateLeadHandedOnWhenTheDeadlinePasses(t *testing.T) {
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

// newModeClient builds a client with cfg, observed by obs, whose plain-HTTP requests with a
// context that never ends take the deadline mode named ("fast", "own" or "cancel"); the test's
// cleanup stops it.
func newModeClient(t *testing.T, mode string, cfg Config, obs Observer) *http.Client {
	t.Helper()
	res, err := New(Params{Config: cfg, Observers: []Observer{obs}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Shutdown(context.Background(), res.Client) })
	switch tr := ownerOf(res.Client).tracker; mode {
	case "own":
		tr.fastHTTP = false
	case "cancel":
		tr.fastHTTP, tr.transport = false, nil
	}
	return res.Client
}

// Each request with a deadline takes the cheapest mode that can reach it (call.go): the fast
// mode for HTTP/1.1 sent straight to an *http.Transport, the own mode for the rest sent straight
// to it under a context that never ends, the cancel mode otherwise.
func TestDeadlineModeChosen(t *testing.T) {
	res, err := New(Params{Config: DefaultConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	o := ownerOf(res.Client)
	noH2 := func() map[string]func(string, *tls.Conn) http.RoundTripper {
		return map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	protocols := func(h2, h2c bool) *http.Protocols {
		p := new(http.Protocols)
		p.SetHTTP1(true)
		p.SetHTTP2(h2)
		p.SetUnencryptedHTTP2(h2c)
		return p
	}
	ending, cancel := context.WithCancel(context.Background())
	defer cancel()
	tests := []struct {
		give      string
		next      http.RoundTripper
		url       string
		ctx       context.Context
		noTimeout bool   // Timeout and ResponseHeaderTimeout are off
		slots     bool   // sent by an upstream with MaxConnsPerHost
		want      string // fast, own, cancel or none
	}{
		{give: "http", next: &http.Transport{}, url: "http://a.test/", want: "fast"},
		{give: "http, caller's context can end", next: &http.Transport{}, url: "http://a.test/", ctx: ending, want: "fast"},
		{give: "http over h2c", next: &http.Transport{Protocols: protocols(false, true)}, url: "http://a.test/", want: "own"},
		{give: "http, upstream with MaxConnsPerHost", next: &http.Transport{}, url: "http://a.test/", slots: true, want: "own"},
		{give: "https, HTTP/2 possible", next: &http.Transport{ForceAttemptHTTP2: true}, url: "https://a.test/", want: "own"},
		{give: "https, caller's context can end", next: &http.Transport{}, url: "https://a.test/", ctx: ending, want: "cancel"},
		{give: "https, empty TLSNextProto", next: &http.Transport{TLSNextProto: noH2()}, url: "https://a.test/", want: "fast"},
		{give: "https, Protocols HTTP/1 only", next: &http.Transport{Protocols: protocols(false, false)}, url: "https://a.test/", want: "fast"},
		{give: "https, Protocols with HTTP/2", next: &http.Transport{Protocols: protocols(true, false), TLSNextProto: noH2()}, url: "https://a.test/", want: "own"},
		{give: "https, TLSNextProto with another protocol", next: &http.Transport{Protocols: protocols(false, false),
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{"x": nil}}, url: "https://a.test/", want: "own"},
		{give: "https, upstream with MaxConnsPerHost", next: &http.Transport{}, url: "https://a.test/", slots: true, want: "own"},
		{give: "wrapped", next: passThrough{&http.Transport{}}, url: "http://a.test/", want: "cancel"},
		{give: "no deadline", next: &http.Transport{}, url: "https://a.test/", noTimeout: true, want: "none"},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tt.url, nil)
			c := &call{o: o}
			if tt.slots {
				c.up = &upstream{timeout: time.Second, slots: make(chan struct{}, 1)}
			}
			saved := o.cfg
			defer func() { o.cfg = saved }()
			if tt.noTimeout {
				o.cfg.Timeout, o.cfg.ResponseHeaderTimeout = 0, 0
			}
			newTracker(o, tt.next).prepare(c, req)
			got := "none"
			switch {
			case c.fast:
				got = "fast"
			case c.own:
				got = "own"
			case c.cancel != nil:
				got = "cancel"
				c.cancel(nil)
			}
			if got != tt.want {
				t.Errorf("mode %s, want %s", got, tt.want)
			}
		})
	}
}

type passThrough struct{ next http.RoundTripper }

func (p passThrough) RoundTrip(r *http.Request) (*http.Response, error) { return p.next.RoundTrip(r) }

// In the own mode the call is a cancellable context: Done is made when asked for and closed
// at cancellation, Err says why, contexts made over it (as net/http makes one per request)
// register with its AfterFunc instead of a goroutine and end with it, and an AfterFunc after
// the end still runs.
func TestOwnContext(t *testing.T) {
	o, err := newOwner(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ownCall := func() *call {
		req, _ := http.NewRequest(http.MethodGet, "https://a.test/", nil)
		c := &call{o: o}
		newTracker(o, &http.Transport{}).prepare(c, req)
		if !c.own {
			t.Fatal("not in the own mode")
		}
		return c
	}
	tests := []struct {
		give    string
		phase   int32 // the failure that cancels the context
		why     error
		wantErr error
	}{
		{give: "timeout", phase: phaseTimeoutInHeader, why: o.timeoutErr, wantErr: context.DeadlineExceeded},
		{give: "cut", phase: phaseCutInHeader, why: errCut, wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			c := ownCall()
			if d, ok := c.Deadline(); !ok || time.Until(d) > o.cfg.Timeout || time.Until(d) < o.cfg.Timeout-time.Minute {
				t.Errorf("Deadline() = %v, %v; want about Config.Timeout from now", d, ok)
			}
			done := c.Done()
			child, cancel := context.WithCancel(c)
			defer cancel()
			if c.after == nil {
				t.Fatal("a context made over the call did not register with its AfterFunc")
			}
			more := make([]context.Context, 3) // as net/http's context of each attempt
			for i := range more {
				ctx, cancel := context.WithCancel(c)
				defer cancel()
				more[i] = ctx
			}
			select {
			case <-done:
				t.Fatal("Done closed before cancellation")
			default:
			}
			if c.Err() != nil || causeOf(c) != nil {
				t.Fatalf("Err() = %v, cause %v before cancellation; want nil", c.Err(), causeOf(c))
			}
			c.phase.Store(tt.phase)
			c.cancelContext(tt.why)
			c.cancelContext(tt.why) // again: nothing changes
			for _, ch := range []<-chan struct{}{done, c.Done(), child.Done(), more[0].Done(), more[1].Done(), more[2].Done()} {
				select {
				case <-ch:
				case <-time.After(5 * time.Second):
					t.Fatal("a Done channel is still open after cancellation")
				}
			}
			if c.Err() != tt.wantErr || child.Err() != tt.wantErr || causeOf(c) != tt.why {
				t.Errorf("Err() = %v, child's %v, cause %v; want %v, %v, %v", c.Err(), child.Err(), causeOf(c), tt.wantErr, tt.wantErr, tt.why)
			}
			ran := make(chan struct{})
			context.AfterFunc(c, func() { close(ran) })
			select {
			case <-ran:
			case <-time.After(5 * time.Second):
				t.Fatal("an AfterFunc registered after cancellation never ran")
			}
		})
	}
	t.Run("Done asked for after cancellation", func(t *testing.T) {
		c := ownCall()
		c.phase.Store(phaseCutInHeader)
		c.cancelContext(errCut)
		select {
		case <-c.Done():
		default:
			t.Fatal("Done made after cancellation is open")
		}
	})
}

// The owned transport takes the fast mode for plain HTTP always, and for HTTPS when
// Config.DisableHTTP2 is set.
func TestOwnedTransportFastModes(t *testing.T) {
	tests := []struct {
		give      bool // Config.DisableHTTP2
		wantHTTPS bool
	}{
		{give: false, wantHTTPS: false},
		{give: true, wantHTTPS: true},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		cfg.DisableHTTP2 = tt.give
		res, err := New(Params{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		tr := ownerOf(res.Client).tracker
		if !tr.fastHTTP || tr.fastHTTPS != tt.wantHTTPS {
			t.Errorf("DisableHTTP2 %v: fast mode for http %v, https %v; want true, %v", tt.give, tr.fastHTTP, tr.fastHTTPS, tt.wantHTTPS)
		}
		Shutdown(context.Background(), res.Client)
	}
}

// A request carries one trace with every hook it needs: health's check of the connection, the
// observation's, the header clock's (with a body), and a caller's own trace still runs too.
func TestOneTraceRunsEveryHook(t *testing.T) {
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
			var callerSaw, wrote []bool
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
				wrote = append(wrote, callOf(resp.Request.Context()).hdrBy.Load() > 0)
			}
			rec.mu.Lock()
			evs := slices.Clone(rec.evs)
			rec.mu.Unlock()
			if len(evs) != 2 || evs[0].Reused || !evs[1].Reused {
				t.Errorf("observer saw %+v; want a new connection, then it reused", evs)
			}
			o.conns.mu.Lock()
			for c := range o.conns.conns {
				if c.proto.Load() != protoH1 {
					t.Errorf("connection's protocol %d: health's hook did not run", c.proto.Load())
				}
			}
			o.conns.mu.Unlock()
			if tt.callerHook && !slices.Equal(callerSaw, []bool{false, true}) {
				t.Errorf("the caller's hook saw %v, want [false true]", callerSaw)
			}
			if tt.body && !slices.Equal(wrote, []bool{true, true}) {
				t.Errorf("header clock started at the write: %v, want [true true]", wrote)
			}
		})
	}
}

// To a host the cold-start gate knows speaks HTTP/2 (no gate, the own mode), a deadline that
// passes at once races net/http: every request fails with the timeout, none hangs.
func TestKnownHTTP2HostRacingTheRoundTrip(t *testing.T) {
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
// certificate hint) that a deadline or stop ends says which, in the own mode too.
func TestGateWaitEndsWithItsCause(t *testing.T) {
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
// takes the fast mode for HTTPS and no cold-start gate: a request is not held behind another
// whose handshake hangs, where a cancellation of the transport's could not reach it.
func TestHTTP1OnlyTLSIsNotGated(t *testing.T) {
	addr := holdingListener(t)
	url := "https://" + addr + "/"
	cfg := DefaultConfig()
	cfg.Timeout, cfg.ResponseHeaderTimeout, cfg.TLSHandshakeTimeout = 0, 0, 5*time.Second
	res, err := New(Params{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(context.Background(), res.Client)
	o := ownerOf(res.Client)
	res.Transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // as a decorator may
	o.tracker = newTracker(o, res.Transport)
	if !o.tracker.fastHTTPS {
		t.Fatal("no fast mode for HTTPS over a transport without HTTP/2")
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
	o.gate.mu.Lock()
	defer o.gate.mu.Unlock()
	if len(o.gate.leading) != 0 {
		t.Errorf("the gate has %d leader(s), want none", len(o.gate.leading))
	}
}

// The own context holds no registration it no longer needs: net/http's, made during the round
// trip, is let go of when the round trip returns; a caller's, made over the response's
// context one after another (as a reader of a long stream may), is let go of by its stop.
func TestOwnContextLetsGo(t *testing.T) {
	o, err := newOwner(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://a.test/", nil)
	c := &call{o: o}
	newTracker(o, &http.Transport{}).prepare(c, req)
	if !c.own {
		t.Fatal("not in the own mode")
	}
	_, cancel := context.WithCancel(c) // as net/http's, during the round trip
	defer cancel()
	if c.after == nil {
		t.Fatal("the round trip's context did not register")
	}
	c.endsWith(phaseBody)
	if c.after != nil {
		t.Error("the round trip's registration is held after it returned")
	}
	for range 1000 {
		_, cancel := context.WithTimeout(c, time.Hour)
		cancel()
	}
	stop := context.AfterFunc(c, func() {})
	if !stop() {
		t.Error("stop of an AfterFunc that has not run reports false")
	}
	if c.more != nil && len(*c.more) != 0 {
		t.Errorf("%d registrations held after their contexts ended", len(*c.more))
	}
	kept, cancelKept := context.WithCancel(c) // one still open is cancelled with the call
	defer cancelKept()
	c.phase.Store(phaseTimeoutInBody)
	c.cancelContext(c.failure())
	select {
	case <-kept.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a context made over the call after the round trip did not end with it")
	}
}
