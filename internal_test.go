package httpfx

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/httpfx/httpfx/internal/dnscache"
)

func TestNoProxyMatch(t *testing.T) {
	t.Parallel()
	list, err := parseNoProxy("example.com, .internal, 10.0.0.0/8, 192.168.1.7, api.test:8443, [::1]:9000")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give string
		want bool
	}{
		{"http://example.com/", true},
		{"http://www.example.com/", true},
		{"http://notexample.com/", false},
		{"http://svc.internal/", true},
		{"http://internal/", false},
		{"http://10.1.2.3:8080/", true},
		{"http://11.1.2.3/", false},
		{"http://192.168.1.7/", true},
		{"https://api.test:8443/", true},
		{"https://api.test/", false},
		{"http://[::1]:9000/", true},
		{"http://[::1]:9001/", false},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.give)
		if got := list.match(u); got != tt.want {
			t.Errorf("match(%s) = %v, want %v", tt.give, got, tt.want)
		}
	}
	all, _ := parseNoProxy("*")
	if u, _ := url.Parse("http://anything/"); !all.match(u) {
		t.Error(`"*" does not match everything`)
	}
}

func TestKeepsCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		from, to string
		want     bool
	}{
		{"https://a.com/x", "https://a.com/y", true},
		{"https://a.com/x", "https://A.com:443/y", true},
		{"http://a.com/x", "https://a.com/y", true},
		{"https://a.com/x", "http://a.com/y", false},
		{"https://a.com/x", "https://a.com:8443/y", false},
		{"https://a.com/x", "https://api.a.com/y", false},
		{"https://a.com/x", "https://b.com/y", false},
		{"http://127.0.0.1:80/x", "http://127.0.0.1:81/y", false},
	}
	for _, tt := range tests {
		from, _ := url.Parse(tt.from)
		to, _ := url.Parse(tt.to)
		if got := keepsCredentials(from, to); got != tt.want {
			t.Errorf("keepsCredentials(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}

// Abandoned bodies whose context ended are finished by the sampled reap of their shard, so
// they do not pile up in a service that never stops.
func TestSampledReapFinishesAbandonedBodies(t *testing.T) {
	t.Parallel()
	o, err := newOwner(DefaultConfig(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	seq, ok := o.admit()
	if !ok {
		t.Fatal("not admitted")
	}
	r := &request{o: o, parent: ctx, ctx: ctx, cancel: cancel, rc: io.NopCloser(strings.NewReader(""))}
	r.bodyOut.Store(true)
	if !o.requests.add(r, seq) {
		t.Fatal("request refused")
	}
	o.requests.reap(seq + 1) // another shard: untouched
	o.requests.reap(seq)
	if n := o.stats.gate.Load(); n != 1 {
		t.Fatalf("in flight = %d before the context ends, want 1", n)
	}
	cancel()
	o.requests.reap(seq + 1)
	if n := o.stats.gate.Load(); n != 1 {
		t.Fatalf("reaping another shard finished the body: in flight = %d", n)
	}
	o.requests.reap(seq)
	if n, f := o.stats.gate.Load(), o.stats.failed.Load(); n != 0 || f != 1 || len(o.requests.visit()) != 0 {
		t.Errorf("after the reap: in flight %d, failed %d, %d bodies listed; want 0, 1, 0", n, f, len(o.requests.visit()))
	}
}

// The cold-start gate releases the followers as soon as the leader's connection negotiated
// HTTP/1.1, where nothing can be shared, instead of holding them for its response.
func TestGateReleasesFollowersOfHTTP1Leader(t *testing.T) {
	t.Parallel()
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			once.Do(func() { close(held) })
			<-release
		}
		io.WriteString(w, r.Proto)
	}))
	srv.EnableHTTP2 = false
	srv.StartTLS()
	defer srv.Close()
	r, err := New(Params{Config: DefaultConfig()})
	if err != nil {
		t.Fatal(err)
	}
	r.Transport.TLSClientConfig.RootCAs = x509.NewCertPool()
	r.Transport.TLSClientConfig.RootCAs.AddCert(srv.Certificate())
	o := ownerOf(r.Client)

	leader := make(chan error, 1)
	go func() {
		resp, err := r.Client.Get(srv.URL + "/hold")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		leader <- err
	}()
	<-held // the leader has its connection and waits for its response
	host := strings.TrimPrefix(srv.URL, "https://")
	if !o.gate.isKnown(host) {
		t.Errorf("the leader's HTTP/1.1 connection did not release the gate of %s", host)
	}
	resp, err := r.Client.Get(srv.URL + "/quick")
	if err != nil {
		t.Fatalf("follower: %v", err)
	}
	resp.Body.Close()
	close(release)
	if err := <-leader; err != nil {
		t.Errorf("leader: %v", err)
	}
	if err := Shutdown(context.Background(), r.Client); err != nil {
		t.Error(err)
	}
}

func TestKeepAliveTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give   string
		want   int
		wantOK bool
	}{
		{"timeout=5, max=100", 5, true},
		{"max=100, timeout=60", 60, true},
		{"Timeout = 2", 2, true},
		{"max=100", 0, false},
		{"timeout=0", 0, false},
		{"timeout=x", 0, false},
		{"timeout=9223372036854775807", maxKeepAliveSecs, true},
		{"timeout=99999999999999999999999", maxKeepAliveSecs, true},
		{"timeout=-5", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := keepAliveTimeout(tt.give)
		if ok != tt.wantOK || (ok && got != tt.want) {
			t.Errorf("keepAliveTimeout(%q) = %d, %v; want %d, %v", tt.give, got, ok, tt.want, tt.wantOK)
		}
	}
}

// A read that finds the connection closed proves the request unsent only if the server's TCP
// acknowledged none of it: closed before the request arrived, yes; read and then closed, no.
func TestUnsentProof(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO's acknowledged bytes are read on Linux only")
	}
	tests := []struct {
		name       string
		serverRead bool // the server reads the request before it closes
		midWrite   bool // the close is read while the armed write has not returned yet
		want       bool
	}{
		{"closed before the request arrived", false, false, true},
		{"closed during the armed write", false, true, true},
		{"read, then closed", true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
			}()
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			srv := <-accepted
			o, err := newOwner(DefaultConfig(), nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			o.conns.health = o.health
			dial := o.conns.wrap(func(context.Context, string, string) (net.Conn, error) { return raw, nil })
			nc, err := dial(context.Background(), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c := nc.(*conn)
			// As health does when a request takes the connection from the pool, with no idle
			// time to peek for: the race this proof is for is the write after the peek.
			c.h.proto.Store(protoH1)
			c.h.armed.Store(true)
			if tt.serverRead {
				go func() { io.ReadAll(io.LimitReader(srv, 4)); srv.Close() }()
			} else {
				srv.Close()
				time.Sleep(20 * time.Millisecond) // the FIN arrives first
			}
			if tt.midWrite {
				c.h.beforeWrite() // the write has begun; net/http's read loop sees the close first
			} else if _, err := c.Write([]byte("POST")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			buf := make([]byte, 8)
			_, err = c.Read(buf)
			var u *unsentError
			if got := errors.As(err, &u); got != tt.want {
				t.Errorf("read error %v: unsent = %v, want %v", err, got, tt.want)
			}
			c.Close()
		})
	}
}

func TestNoProxyWildcardDomain(t *testing.T) {
	t.Parallel()
	list, err := parseNoProxy("*.example.com, *.test:8443")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		give string
		want bool
	}{
		{give: "http://api.example.com/", want: true},
		{give: "http://a.b.example.com/", want: true},
		{give: "http://example.com/", want: false}, // subdomains only, as ".example.com"
		{give: "http://notexample.com/", want: false},
		{give: "https://x.test:8443/", want: true},
		{give: "https://x.test/", want: false},
	} {
		u, _ := url.Parse(tt.give)
		if got := list.match(u); got != tt.want {
			t.Errorf("match(%s) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

// Connections of a transport that speaks HTTP/1.1 and unencrypted HTTP/2 are HTTP/1.1 over
// plain TCP, as net/http decides (h2c with prior knowledge only when HTTP/1.1 is off): health
// keeps them, here retiring one past MaxConnLifetime.
func TestUnencryptedHTTP2BesideHTTP1IsHTTP1(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }))
	defer srv.Close()
	cfg := DefaultConfig()
	cfg.MaxConnLifetime = 50 * time.Millisecond
	o, err := newOwner(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	o.transport.Protocols = new(http.Protocols) // as a decorator may
	o.transport.Protocols.SetHTTP1(true)
	o.transport.Protocols.SetUnencryptedHTTP2(true)
	client := o.newClient(o.transport, o.transport)
	defer Shutdown(context.Background(), client)
	for range 2 {
		resp, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "HTTP/1.1" {
			t.Fatalf("protocol %q, want HTTP/1.1", b)
		}
		time.Sleep(60 * time.Millisecond) // past the lifetime
	}
	if n := o.stats.Snapshot().ConnsRetired[RetiredLifetime]; n != 1 {
		t.Errorf("%d connections retired past their lifetime, want 1: health is off for them", n)
	}
}

// A connection marked gone when DNS dropped its address is kept again when the address comes
// back before a request takes it.
func TestGoneClearsWhenTheAddressIsBack(t *testing.T) {
	s := newConnSet(new(Stats))
	c := &conn{set: s, dns: &dnscache.Conn{Host: "svc.test"}, ip: netip.MustParseAddr("127.0.0.1")}
	s.conns = map[*conn]struct{}{c: {}}
	s.markGone("svc.test", []netip.Addr{netip.MustParseAddr("127.0.0.2")})
	if !c.gone.Load() {
		t.Fatal("not marked gone when its address was dropped")
	}
	s.markGone("svc.test", []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")})
	if c.gone.Load() {
		t.Error("still marked gone after its address came back")
	}
}

// Learning the idle bound a Keep-Alive header announces takes no lock that other requests
// hold: here the lock that adds addresses is held throughout.
func TestKeepAliveTakesNoLock(t *testing.T) {
	h := newHealth(DefaultConfig(), new(Stats), &clock{epoch: time.Now()})
	h.peerFor("svc.test:80")
	h.mu.Lock()
	defer h.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.keepAlive(&url.URL{Scheme: "http", Host: "svc.test"}, "timeout=5")
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("keepAlive waits for a lock")
	}
	if b := h.idleBounds()["svc.test:80"]; b != 5*time.Second {
		t.Errorf("bound %v, want 5s", b)
	}
}

// What a peer learns from its server's closes, moment by moment: only an idle timer, never a
// restart; and a bound found wrong by a connection kept open past it is dropped.
func TestPeerLearnsOnlyATimer(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	type close struct {
		at   int           // ms on health's clock
		idle time.Duration // how long the connection had been idle
	}
	tests := []struct {
		give   string
		closes []close
		open   []close // connections found open after an idle time, at a moment
		ending []int   // ms when a response said Connection: close
		want   time.Duration
	}{
		{give: "one close", closes: []close{{0, ms(150)}}},
		{give: "two moments agree", closes: []close{{0, ms(150)}, {500, ms(152)}}},
		{give: "three moments agree", closes: []close{{0, ms(150)}, {500, ms(152)}, {900, ms(158)}}, want: ms(150)},
		{give: "a restart: one moment, idle times apart", closes: []close{{0, ms(20)}, {1, ms(150)}, {2, ms(90)}, {3, ms(300)}}},
		{give: "restarts, one connection each, idle times about alike",
			closes: []close{{0, ms(60)}, {200, ms(120)}, {400, ms(62)}, {600, ms(95)}, {800, ms(61)}, {1000, ms(150)}}},
		{give: "restarts with several connections, idle times apart",
			closes: []close{{0, ms(60)}, {1, ms(160)}, {500, ms(61)}, {501, ms(180)}, {1000, ms(62)}, {1001, ms(170)}}},
		{give: "closes after a few milliseconds: no timer", closes: []close{{0, ms(20)}, {500, ms(20)}, {1000, ms(21)}}},
		{give: "a burst of one timer: one moment, the same idle time, then two more",
			closes: []close{{0, ms(150)}, {1, ms(150)}, {2, ms(151)}, {700, ms(150)}, {1200, ms(155)}}, want: ms(150)},
		{give: "three moments agree, but a connection stayed open far longer",
			closes: []close{{0, ms(60)}, {500, ms(60)}, {1000, ms(61)}}, open: []close{{200, ms(400)}}},
		{give: "learned, then found open far past it",
			closes: []close{{0, ms(150)}, {500, ms(150)}, {1000, ms(150)}}, open: []close{{1500, ms(450)}}},
		{give: "learned, then found open a little past it (a timer that fires late)",
			closes: []close{{0, ms(150)}, {500, ms(150)}, {1000, ms(150)}}, open: []close{{1500, ms(170)}}, want: ms(150)},
		{give: "three moments far apart in idle time", closes: []close{{0, ms(150)}, {500, ms(400)}, {1000, ms(900)}}},
		{give: "restarts whose idle closes agree, with barely idle connections closed too",
			closes: []close{{0, ms(150)}, {1, ms(3)}, {500, ms(152)}, {501, ms(1)}, {900, ms(2)}, {901, ms(158)}}},
		{give: "restarts whose idle closes agree, with responses saying Connection: close",
			closes: []close{{0, ms(150)}, {500, ms(152)}, {900, ms(158)}}, ending: []int{10, 510, 880}},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			p := new(peer)
			type event struct {
				at     int
				idle   time.Duration
				open   bool
				ending bool
			}
			var evs []event
			for _, c := range tt.closes {
				evs = append(evs, event{c.at, c.idle, false, false})
			}
			for _, c := range tt.open {
				evs = append(evs, event{c.at, c.idle, true, false})
			}
			for _, at := range tt.ending {
				evs = append(evs, event{at: at, ending: true})
			}
			slices.SortFunc(evs, func(a, b event) int { return a.at - b.at })
			for _, e := range evs {
				now := int64(ms(e.at))
				switch {
				case e.ending:
					p.busy(0, now) // as health.closing tells it
				case e.open:
					p.open(e.idle, now)
				default:
					p.closed(e.idle, now)
				}
			}
			got := time.Duration(0)
			if p.retireAfter(int64(ms(3000))) > 0 {
				got = time.Duration(p.bound.Load())
			}
			if got != tt.want {
				t.Errorf("bound %v, want %v", got, tt.want)
			}
		})
	}
}

// blockingObserver holds every connection close it is told until release is closed.
type blockingObserver struct {
	closing chan struct{} // a close is being told
	release chan struct{}
}

func (o *blockingObserver) RequestStarted(RequestEvent)  {}
func (o *blockingObserver) RequestFinished(RequestEvent) {}
func (o *blockingObserver) ConnChanged(ev ConnEvent) {
	if ev.Kind == ConnClosed {
		o.closing <- struct{}{}
		<-o.release
	}
}

// Stop returns only once every observer has seen every event: a connection that net/http
// closes while stop runs is told before stop returns, however long the observer takes.
func TestStopWaitsForEventsBeingTold(t *testing.T) {
	obs := &blockingObserver{closing: make(chan struct{}, 1), release: make(chan struct{})}
	o, err := newOwner(DefaultConfig(), nil, nil, []Observer{obs})
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	defer server.Close()
	dial := o.conns.wrap(func(context.Context, string, string) (net.Conn, error) { return client, nil })
	nc, err := dial(context.Background(), "tcp", "svc.test:80")
	if err != nil {
		t.Fatal(err)
	}
	o.conns.announce(nc.(*conn), nil)
	go nc.Close() // as net/http's read loop does
	<-obs.closing
	stopped := make(chan error, 1)
	go func() { stopped <- o.stop(context.Background()) }()
	select {
	case err := <-stopped:
		t.Fatalf("stop returned (%v) while a close was being told", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(obs.release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// Only a whole TLS record that can be nothing but a close_notify proves the armed request
// unsent over TLS; what else a server may send unasked proves nothing.
func TestCloseNotify(t *testing.T) {
	t.Parallel()
	record := func(typ byte, length int) []byte {
		return append([]byte{typ, 3, 3, byte(length >> 8), byte(length)}, make([]byte, length)...)
	}
	tests := []struct {
		give string
		data []byte
		want bool
	}{
		{give: "TLS 1.3 close_notify (19-byte application data)", data: record(23, 19), want: true},
		{give: "TLS 1.2 alert record (AES-GCM)", data: record(21, 26), want: true},
		{give: "TLS 1.3 key update (22 bytes)", data: record(23, 22)},
		{give: "TLS 1.3 session ticket", data: record(23, 200)},
		{give: "TLS 1.2 handshake (renegotiation request)", data: record(22, 36)},
		{give: "a record and more", data: append(record(23, 19), record(23, 19)...)},
		{give: "part of a record", data: record(23, 19)[:10]},
		{give: "a header alone", data: record(21, 26)[:5]},
		{give: "nothing", data: nil},
	}
	for _, tt := range tests {
		if got := closeNotify(tt.data); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.give, got, tt.want)
		}
	}
}
