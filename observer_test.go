package httpfx_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// recorder is an Observer that keeps every event.
type recorder struct {
	mu       sync.Mutex
	started  []httpfx.RequestEvent
	finished []httpfx.RequestEvent
	conns    []httpfx.ConnEvent
}

var _ httpfx.Observer = (*recorder)(nil)

func (r *recorder) RequestStarted(ev httpfx.RequestEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started = append(r.started, ev)
}

func (r *recorder) RequestFinished(ev httpfx.RequestEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finished = append(r.finished, ev)
}

func (r *recorder) ConnChanged(ev httpfx.ConnEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conns = append(r.conns, ev)
}

// counts returns the requests started and finished and the connections idle, active, opened
// and closed, as an observer counting the events sees them.
func (r *recorder) counts() (started, finished, idle, active, opened, closed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.conns {
		switch ev.Kind {
		case httpfx.ConnOpened:
			idle++
			opened++
		case httpfx.ConnActive:
			idle--
			active++
		case httpfx.ConnIdle:
			active--
			idle++
		case httpfx.ConnClosed:
			closed++
			if ev.WasActive {
				active--
			} else {
				idle--
			}
		}
	}
	return len(r.started), len(r.finished), idle, active, opened, closed
}

func (r *recorder) finishedEvents() []httpfx.RequestEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]httpfx.RequestEvent(nil), r.finished...)
}

func (r *recorder) connEvents() []httpfx.ConnEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]httpfx.ConnEvent(nil), r.conns...)
}

// observe adds r to the module's observers.
func observe(r httpfx.Observer) fx.Option {
	return fx.Supply(fx.Annotate(r, fx.As(new(httpfx.Observer)), fx.ResultTags(`group:"httpfx.observers"`)))
}

// A known load through the shared client and an upstream client: every request is seen
// started and finished with its method, origin, status, protocol and upstream; connections
// are seen opened, active, idle and closed, and their counts match Stats.
func TestObserverSeesRequestsAndConnections(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "ok")
	}))
	rec := new(recorder)
	var g graph
	var up *http.Client
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), observe(rec),
		httpfx.Upstream("search", httpfx.UpstreamConfig{BaseURL: u.URL + "/search/"}),
		fx.Invoke(fx.Annotate(func(c *http.Client) { up = c }, fx.ParamTags(`name:"search"`))),
	)
	app.RequireStart()

	const workers, each = 4, 5
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				mustGet(t, g.Client, u.URL+"/shared")
				mustGet(t, up, "q")
			}
		}()
	}
	wg.Wait()
	resp, err := g.Client.Head(u.URL + "/missing") // no body: finished at the round trip
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	const total = 2*workers*each + 1
	s := g.Stats.Snapshot()
	started, finished, idle, active, opened, _ := rec.counts()
	if started != total || finished != total || s.Requests != total {
		t.Fatalf("started %d, finished %d, Stats.Requests %d; want %d each", started, finished, s.Requests, total)
	}
	// A connection is told once a request takes it: net/http may also pool one it dialled for
	// a request that took a freed one meanwhile, which Stats counts and no event tells yet.
	if opened == 0 || int64(opened) > s.ConnsOpened || idle != opened || active != 0 {
		t.Errorf("events: %d opened, %d idle, %d active; Stats: %d opened, %d open; want at most Stats' opened, all idle",
			opened, idle, active, s.ConnsOpened, s.ConnsOpen)
	}
	if s.ConnsIdle != s.ConnsOpen || s.ConnsInUse != 0 || s.Waiting != 0 {
		t.Errorf("Snapshot: %d idle, %d in use, %d waiting of %d open; want all idle", s.ConnsIdle, s.ConnsInUse, s.Waiting, s.ConnsOpen)
	}

	port := u.Listener.Addr().(*net.TCPAddr).Port
	byUpstream := map[string]int{}
	reused := 0
	for _, ev := range rec.finishedEvents() {
		byUpstream[ev.Upstream]++
		if ev.Reused {
			reused++
		}
		wantStatus, wantMethod := http.StatusOK, "GET"
		if ev.Method == "HEAD" {
			wantStatus, wantMethod = http.StatusNotFound, "HEAD"
		}
		if ev.Method != wantMethod || ev.Scheme != "http" || ev.Host != "127.0.0.1" || ev.Port != port ||
			ev.StatusCode != wantStatus || ev.ProtoMajor != 1 || ev.ProtoMinor != 1 || ev.Error != "" || ev.Err != nil ||
			ev.Duration <= 0 {
			t.Errorf("finished event %+v: want %s http://127.0.0.1:%d, status %d, HTTP/1.1, no error, a duration", ev, wantMethod, port, wantStatus)
		}
	}
	if byUpstream[""] != workers*each+1 || byUpstream["search"] != workers*each {
		t.Errorf("requests by upstream = %v, want %d for the shared client and %d for search", byUpstream, workers*each+1, workers*each)
	}
	// A request either reuses a connection or takes a new one; net/http may also pool a
	// connection it dialled for a request that took a freed one meanwhile.
	if least := total - opened; reused < least || reused >= total {
		t.Errorf("%d requests reused a connection, want at least %d (requests − connections opened) and fewer than %d", reused, least, total)
	}

	app.RequireStop()
	_, _, idle, active, opened, closed := rec.counts()
	if idle != 0 || active != 0 || closed != opened {
		t.Errorf("after stop: %d idle, %d active, %d of %d closed; want all closed", idle, active, closed, opened)
	}
	for _, ev := range rec.connEvents() {
		if ev.Addr != u.Listener.Addr().String() || !strings.HasPrefix(ev.Peer, "127.0.0.1:") {
			t.Errorf("conn event %+v: want the upstream's address", ev)
		}
		if ev.Kind == httpfx.ConnClosed && (ev.Reason != "closed" || ev.Age <= 0) {
			t.Errorf("conn closed %+v: want reason closed (idle, closed by stop's CloseIdleConnections) and an age", ev)
		}
	}
	u.RequireNoConns(t)
}

// Without an observer, the connection states are unknown.
func TestSnapshotStatesUnknownWithoutObserver(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	res, err := httpfx.New(httpfx.Params{Config: httpfx.DefaultConfig(), Observers: []httpfx.Observer{nil}})
	if err != nil {
		t.Fatal(err)
	}
	mustGet(t, res.Client, u.URL)
	if s := res.Stats.Snapshot(); s.ConnsIdle != -1 || s.ConnsInUse != -1 || s.Waiting != -1 {
		t.Errorf("Snapshot = %+v, want -1 idle, in use and waiting", s)
	}
	if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
		t.Fatal(err)
	}
	u.RequireNoConns(t)
}

// A request holding a connection, and one waiting for the upstream's only one, show as in
// use and waiting; New takes observers through Params.
func TestObserverInUseAndWaiting(t *testing.T) {
	hold := testutil.NewGate()
	defer hold.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		hold.Wait()
	}))
	rec := new(recorder)
	cfg := httpfx.DefaultConfig()
	cfg.MaxConnsPerHost, cfg.MaxIdleConnsPerHost = 1, 1
	res, err := httpfx.New(httpfx.Params{Config: cfg, Observers: []httpfx.Observer{rec}})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := get(res.Client, u.URL)
			errs <- err
		}()
	}
	testutil.WaitFor(t, "one request held, one waiting", func() bool {
		s := res.Stats.Snapshot()
		return hold.Waiting.Load() == 1 && s.ConnsInUse == 1 && s.ConnsIdle == 0 && s.Waiting == 1
	})
	if _, _, idle, active, _, _ := rec.counts(); idle != 0 || active != 1 {
		t.Errorf("events: %d idle, %d active; want 0 and 1", idle, active)
	}
	hold.Release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if s := res.Stats.Snapshot(); s.ConnsInUse != 0 || s.ConnsIdle != 1 || s.Waiting != 0 {
		t.Errorf("after: %+v, want the connection idle and nothing waiting", s)
	}
	if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
		t.Fatal(err)
	}
	u.RequireNoConns(t)
}

// Over HTTP/2 a connection carries many requests: it is active while any is in flight.
func TestObserverHTTP2(t *testing.T) {
	hold := testutil.NewGate()
	defer hold.Release()
	u := testutil.NewTLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			w.(http.Flusher).Flush()
			hold.Wait()
		}
		io.WriteString(w, "ok")
	}), true)
	rec := new(recorder)
	cfg := httpfx.DefaultConfig()
	cfg.TLSCAPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.Certificate().Raw}))
	res, err := httpfx.New(httpfx.Params{Config: cfg, Observers: []httpfx.Observer{rec}})
	if err != nil {
		t.Fatal(err)
	}
	mustGet(t, res.Client, u.URL) // the HTTP/2 connection
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := get(res.Client, u.URL+"/hold")
			errs <- err
		}()
	}
	testutil.WaitFor(t, "three streams held", func() bool { return hold.Waiting.Load() == 3 })
	if s := res.Stats.Snapshot(); s.ConnsOpen != 1 || s.ConnsInUse != 1 || s.ConnsIdle != 0 {
		t.Errorf("three streams on one connection: %+v, want it open and in use", s)
	}
	hold.Release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if s := res.Stats.Snapshot(); s.ConnsInUse != 0 || s.ConnsIdle != 1 {
		t.Errorf("after: %+v, want one idle connection", s)
	}
	for _, ev := range rec.finishedEvents() {
		if ev.ProtoMajor != 2 || ev.Scheme != "https" {
			t.Errorf("event %+v: want HTTP/2 over https", ev)
		}
	}
	if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
		t.Fatal(err)
	}
	if _, _, idle, active, opened, closed := rec.counts(); idle != 0 || active != 0 || opened != 1 || closed != 1 {
		t.Errorf("events: %d idle, %d active, %d opened, %d closed; want one opened and closed", idle, active, opened, closed)
	}
	u.RequireNoConns(t)
}

// Each way a request fails has its class.
func TestObserverErrorClasses(t *testing.T) {
	stalls := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := "http://" + ln.Addr().String()
	ln.Close()

	tests := []struct {
		name string
		give func(t *testing.T, c *http.Client)
		want httpfx.ErrorClass
	}{
		{"connection refused", func(t *testing.T, c *http.Client) {
			if _, err := get(c, closedPort); err == nil {
				t.Error("no error")
			}
		}, httpfx.ErrorConnection},
		{"timeout reading the body", func(t *testing.T, c *http.Client) {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, stalls.URL, nil)
			if _, _, err := send(c, req); err == nil {
				t.Error("no error")
			}
		}, httpfx.ErrorTimeout},
		{"canceled, body never read", func(t *testing.T, c *http.Client) {
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, stalls.URL, nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			cancel()
			if _, err := io.ReadAll(resp.Body); err == nil {
				t.Error("no error")
			}
		}, httpfx.ErrorCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := new(recorder)
			res, err := httpfx.New(httpfx.Params{Config: httpfx.DefaultConfig(), Observers: []httpfx.Observer{rec}})
			if err != nil {
				t.Fatal(err)
			}
			tt.give(t, res.Client)
			evs := rec.finishedEvents()
			if len(evs) != 1 || evs[0].Error != tt.want || evs[0].Err == nil {
				t.Errorf("finished events %+v, want one with class %q and its error", evs, tt.want)
			}
			if err := httpfx.Shutdown(context.Background(), res.Client); err != nil {
				t.Fatal(err)
			}
		})
	}
	stalls.RequireNoConns(t)
}

// A request cut at stop is finished with class closed before stop returns, and its
// connection closes with reason stop.
func TestObserverCutAtStop(t *testing.T) {
	hang := testutil.NewGate()
	defer hang.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		hang.Wait()
	}))
	rec := new(recorder)
	cfg := httpfx.DefaultConfig()
	cfg.DrainTimeout = 100 * time.Millisecond
	res, err := httpfx.New(httpfx.Params{Config: cfg, Observers: []httpfx.Observer{rec}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := res.Client.Get(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := httpfx.Shutdown(context.Background(), res.Client); err == nil || !strings.Contains(err.Error(), "cut 1") {
		t.Fatalf("stop: %v, want 1 cut", err)
	}
	evs := rec.finishedEvents()
	if len(evs) != 1 || evs[0].Error != httpfx.ErrorClosed || !errors.Is(evs[0].Err, httpfx.ErrClosed) || evs[0].StatusCode != 200 {
		t.Errorf("finished events %+v, want one closed, wrapping ErrClosed, with its status", evs)
	}
	var reasons []string
	for _, ev := range rec.connEvents() {
		if ev.Kind == httpfx.ConnClosed {
			reasons = append(reasons, fmt.Sprintf("%s active=%v", ev.Reason, ev.WasActive))
		}
	}
	// The cut closes the body, and so net/http closes the connection; or stop does. The cut
	// finishes the request as it closes the body, so the connection may already count as
	// idle when it closes: either way the counts add up.
	if len(reasons) != 1 || (!strings.HasPrefix(reasons[0], "closed ") && !strings.HasPrefix(reasons[0], "stop ")) {
		t.Errorf("connection closes: %v, want one, by net/http or stop", reasons)
	}
	hang.Release()
	u.RequireNoConns(t)
}

// A connection still open when stop closes the set closes with reason stop.
func TestObserverStopReason(t *testing.T) {
	hang := testutil.NewGate()
	defer hang.Release()
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hang.Wait() }))
	rec := new(recorder)
	cfg := httpfx.DefaultConfig()
	cfg.DrainTimeout, cfg.ResponseHeaderTimeout, cfg.Timeout = 100*time.Millisecond, 0, 0
	res, err := httpfx.New(httpfx.Params{Config: cfg, Observers: []httpfx.Observer{rec}})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() {
		_, err := get(res.Client, u.URL) // waits for headers: only closing its connection ends it
		errs <- err
	}()
	testutil.WaitFor(t, "the request reaches the handler", func() bool { return hang.Waiting.Load() == 1 })
	if err := httpfx.Shutdown(context.Background(), res.Client); err == nil {
		t.Fatal("stop: no error, want 1 cut")
	}
	if err := <-errs; err == nil {
		t.Fatal("the cut request succeeded")
	}
	evs := rec.finishedEvents()
	if len(evs) != 1 || evs[0].Error != httpfx.ErrorClosed || evs[0].StatusCode != 0 {
		t.Errorf("finished events %+v, want one closed without status", evs)
	}
	var closes []httpfx.ConnEvent
	for _, ev := range rec.connEvents() {
		if ev.Kind == httpfx.ConnClosed {
			closes = append(closes, ev)
		}
	}
	if len(closes) != 1 || closes[0].Reason != "stop" || !closes[0].WasActive {
		t.Errorf("connection closes %+v, want one by stop while active", closes)
	}
	hang.Release()
	u.RequireNoConns(t)
}

// Several observers all see every event.
func TestObserversGroup(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	a, b := new(recorder), new(recorder)
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), observe(a), observe(b))
	app.RequireStart()
	mustGet(t, g.Client, u.URL)
	app.RequireStop()
	for i, r := range []*recorder{a, b} {
		if s, f, _, _, o, c := r.counts(); s != 1 || f != 1 || o != 1 || c != 1 {
			t.Errorf("observer %d saw %d started, %d finished, %d opened, %d closed; want 1 each", i, s, f, o, c)
		}
	}
	u.RequireNoConns(t)
}

func TestConnEventKindString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give httpfx.ConnEventKind
		want string
	}{
		{httpfx.ConnOpened, "opened"},
		{httpfx.ConnActive, "active"},
		{httpfx.ConnIdle, "idle"},
		{httpfx.ConnClosed, "closed"},
		{0, "ConnEventKind(0)"},
	}
	for _, tt := range tests {
		if got := tt.give.String(); got != tt.want {
			t.Errorf("%d.String() = %q, want %q", int(tt.give), got, tt.want)
		}
	}
}

// A connection whose TLS handshake fails never carried HTTP: the observers hear nothing of
// it (Stats counts the dial). One that succeeds is told with its TLS state.
func TestFailedHandshakeIsNoConnection(t *testing.T) {
	u := testutil.NewTLSServer(t, okHandler(), false) // a certificate the client does not trust
	rec := new(recorder)
	var g graph
	app := fxtest.New(t, fx.NopLogger, httpfx.Module, populate(&g), observe(rec))
	app.RequireStart()
	if _, err := get(g.Client, u.URL); err == nil {
		t.Fatal("the request succeeded with an untrusted certificate")
	}
	trusted := testutil.NewTLSServer(t, okHandler(), false)
	roots := x509.NewCertPool()
	roots.AddCert(trusted.Certificate())
	g.Transport.TLSClientConfig.RootCAs = roots // before its first handshake
	if _, err := get(g.Client, trusted.URL); err != nil {
		t.Fatal(err)
	}
	app.RequireStop()
	var opened []httpfx.ConnEvent
	closed := 0
	for _, ev := range rec.connEvents() {
		switch ev.Kind {
		case httpfx.ConnOpened:
			opened = append(opened, ev)
		case httpfx.ConnClosed:
			closed++
		}
	}
	if len(opened) != 1 || !opened[0].TLS || opened[0].Addr != trusted.Listener.Addr().String() || closed != 1 {
		t.Errorf("opened %+v and %d closed; want the trusted server's TLS connection only", opened, closed)
	}
	if s := g.Stats.Snapshot(); s.ConnsOpened != 2 || s.HandshakesFull != 1 {
		t.Errorf("Stats: %d dialled, %d full handshakes; want 2 and 1", s.ConnsOpened, s.HandshakesFull)
	}
	u.RequireNoConns(t)
}

// lateObserver fails the test for any event told after stop returned.
type lateObserver struct {
	t       *testing.T
	stopped atomic.Bool
	events  atomic.Int64
}

func (o *lateObserver) event(what string) {
	o.events.Add(1)
	time.Sleep(time.Millisecond) // an observer that takes a moment: stop must wait for it
	if o.stopped.Load() {
		o.t.Errorf("%s told, or still being told, after stop returned", what)
	}
}

func (o *lateObserver) RequestStarted(httpfx.RequestEvent)  { o.event("RequestStarted") }
func (o *lateObserver) RequestFinished(httpfx.RequestEvent) { o.event("RequestFinished") }
func (o *lateObserver) ConnChanged(ev httpfx.ConnEvent)     { o.event("ConnChanged " + ev.Kind.String()) }

// When stop returns, every observer has seen every event of the app: connections that net/http
// closes while stop runs (here, after every response), and requests that end as it cuts, are
// all told first, however long the observer takes.
func TestNoEventAfterStop(t *testing.T) {
	t.Parallel()
	var events int64
	for round := range 10 {
		obs := &lateObserver{t: t}
		u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close") // net/http closes each connection after its response
			io.WriteString(w, "ok")
		}))
		cfg := httpfx.DefaultConfig()
		cfg.DrainTimeout = 20 * time.Millisecond
		res, err := httpfx.New(httpfx.Params{Config: cfg, Observers: []httpfx.Observer{obs}})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 1000; j++ {
					resp, err := res.Client.Get(u.URL)
					if errors.Is(err, httpfx.ErrClosed) {
						return
					}
					if err == nil && (i+j)%7 != 0 { // some left open: stop cuts them
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}()
		}
		time.Sleep(time.Duration(20+5*round) * time.Millisecond)
		httpfx.Shutdown(context.Background(), res.Client)
		obs.stopped.Store(true)
		wg.Wait()
		time.Sleep(10 * time.Millisecond) // a late event would come now
		events += obs.events.Load()
	}
	if events == 0 {
		t.Fatal("no event at all")
	}
}
