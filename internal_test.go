package httpfx

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
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
		want       bool
	}{
		{"closed before the request arrived", false, true},
		{"read, then closed", true, false},
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
			if _, err := c.Write([]byte("POST")); err != nil {
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
