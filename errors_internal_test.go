package httpfx

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"
)

// net/http's error for a request past the transport's ResponseHeaderTimeout is recognised, over
// HTTP/1.1 and HTTP/2: its text is net/http's, which exports no value for it, so this pins it
// on every Go that CI runs.
func TestResponseHeaderTimeoutErrorText(t *testing.T) {
	t.Parallel()
	for _, h2 := range []bool{false, true} {
		name := "http1"
		if h2 {
			name = "http2"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/ok" {
					<-r.Context().Done()
				}
			}))
			srv.EnableHTTP2 = h2
			srv.StartTLS()
			defer srv.Close()
			defer srv.CloseClientConnections()
			tr := srv.Client().Transport.(*http.Transport).Clone()
			defer tr.CloseIdleConnections()
			tr.ForceAttemptHTTP2 = h2
			tr.ResponseHeaderTimeout = time.Second
			resp, err := tr.RoundTrip(httptest.NewRequest(http.MethodGet, srv.URL+"/ok", nil).WithContext(context.Background()))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if (resp.ProtoMajor == 2) != h2 {
				t.Fatalf("protocol %d, want HTTP/2 %v", resp.ProtoMajor, h2)
			}
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			if resp, err = tr.RoundTrip(req); err == nil {
				resp.Body.Close()
				t.Fatal("no error")
			}
			if !isHeaderTimeout(err) {
				t.Errorf("isHeaderTimeout(%q) = false: net/http's text changed", err)
			}
			if isHeaderTimeout(context.DeadlineExceeded) || isHeaderTimeout(errors.New("timeout awaiting response headers")) {
				t.Error("isHeaderTimeout takes an error that is not net/http's")
			}
		})
	}
}

// net/http's error for a request given a pooled connection that its server had closed before
// the request was written to it is recognised: errServerClosedIdle is net/http's text, which it
// exports no value for, so this pins it on every Go that CI runs. The race is made certain: the
// server's close reaches net/http's read loop while the request holds the connection, before
// it writes.
func TestServerClosedIdleErrorText(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served sync.WaitGroup
	served.Add(1)
	go func() { // one response with keep-alive, then wait for the client to go
		defer served.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		io.Copy(io.Discard, br)
	}()
	eof := make(chan struct{}) // closed: the connection's next read reports the server's close
	var conn *eofConn
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn = &eofConn{Conn: c, eof: eof, closed: make(chan struct{})}
		return conn, nil
	}}
	defer tr.CloseIdleConnections()
	url := "http://" + ln.Addr().String()
	resp, err := tr.RoundTrip(httptest.NewRequest(http.MethodGet, url, nil).WithContext(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
		close(eof)
		select { // net/http's read loop sees the close and closes the connection
		case <-conn.closed:
		case <-time.After(10 * time.Second):
		}
	}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, io.NopCloser(strings.NewReader("x"))) // not replayable
	if resp, err = tr.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatal("no error")
	}
	if !neverSent(err) {
		t.Errorf("neverSent(%q) = false: net/http's text changed, want %q", err, errServerClosedIdle)
	}
	ln.Close()
	served.Wait()
}

// eofConn reports EOF on its reads once eof is closed, as if its server had closed it.
type eofConn struct {
	net.Conn
	eof       chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *eofConn) Read(p []byte) (int, error) {
	type result struct {
		n   int
		err error
	}
	select {
	case <-c.eof:
		return 0, io.EOF
	default:
	}
	done := make(chan result, 1)
	go func() {
		n, err := c.Conn.Read(p)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		return r.n, r.err
	case <-c.eof:
		c.Conn.SetReadDeadline(time.Now())
		<-done
		return 0, io.EOF
	}
}

func (c *eofConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
