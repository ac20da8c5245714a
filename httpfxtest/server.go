package httpfxtest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// Server serves one test handler on two real loopback servers, one for http and one for https
// (offering HTTP/2), and records every request they receive. Env.Upstream and Env.Host create
// it; its Env closes it when the test ends. It is safe for concurrent use. The zero Server is
// not usable.
type Server struct {
	env   *Env
	h     http.Handler
	plain *httptest.Server
	tls   *httptest.Server

	mu   sync.Mutex
	reqs []Request
}

// Request is a request as a Server received it: a copy the caller owns, safe for concurrent
// use as long as nobody changes it. The fields hold the real values, for assertions; String
// redacts credentials. The zero Request is an empty request.
type Request struct {
	// Method is the request's method, such as "POST".
	Method string

	// URL is the URL the client sent the request to: scheme, Host (as the Host header says),
	// path and query.
	URL *url.URL

	// Header holds the request's headers, Host aside (it is in URL).
	Header http.Header

	// Body is the request body as the client sent it. For a request with
	// "Expect: 100-continue" it is what the handler read, so that the handler still decides
	// whether the client sends the body. Nil means none.
	Body []byte

	env *Env // for the headers an upstream configuration sets, which are redacted too
}

// newServer starts a Server for h. e.mu is held.
func (e *Env) newServer(h http.Handler) *Server {
	s := &Server{env: e, h: h}
	quiet := log.New(io.Discard, "", 0) // a client that fails a handshake gets the error itself
	s.plain = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.plain.Config.ErrorLog = quiet
	s.plain.Start()
	s.tls = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.tls.Config.ErrorLog = quiet
	s.tls.TLS = &tls.Config{NextProtos: nextProtos(), GetConfigForClient: e.tlsConfig}
	s.tls.StartTLS()
	e.servers = append(e.servers, s)
	return s
}

// Requests returns the requests the server has received so far, in the order they arrived:
// copies the caller may change. A request appears as soon as its handler starts.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.reqs))
	for i, r := range s.reqs {
		u := *r.URL
		r.URL, r.Header, r.Body = &u, r.Header.Clone(), bytes.Clone(r.Body)
		out[i] = r
	}
	return out
}

// serve records r, then hands it to the handler.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	u := *r.URL
	u.Scheme, u.Host = scheme(r.TLS != nil), r.Host
	rec := Request{Method: r.Method, URL: &u, Header: r.Header.Clone(), env: s.env}
	var tee *teeBody
	switch {
	case r.Body == nil || r.Body == http.NoBody:
	case strings.EqualFold(r.Header.Get("Expect"), "100-continue"):
		tee = &teeBody{ReadCloser: r.Body}
		r.Body = tee
	default:
		b, err := io.ReadAll(r.Body)
		rec.Body = b
		r.Body = &replayBody{r: bytes.NewReader(b), err: err, c: r.Body}
	}
	s.mu.Lock()
	i := len(s.reqs)
	s.reqs = append(s.reqs, rec)
	s.mu.Unlock()
	if tee != nil {
		defer func() {
			s.mu.Lock()
			s.reqs[i].Body = tee.buf.Bytes()
			s.mu.Unlock()
		}()
	}
	s.h.ServeHTTP(w, r)
}

// addr returns the address of the server for http or https.
func (s *Server) addr(tls bool) string {
	if tls {
		return s.tls.Listener.Addr().String()
	}
	return s.plain.Listener.Addr().String()
}

// close closes both servers, waiting for their handlers.
func (s *Server) close() {
	s.plain.Close()
	s.tls.Close()
}

// String returns the request as a failure message shows it: method and URL, headers sorted
// by name, then the body (its first 1 KiB). Values of credentials are replaced with
// "[redacted]": Authorization, Proxy-Authorization, Cookie, headers whose names contain
// "auth", "key", "token", "secret", "password", "session", "signature" or "credential",
// the headers of Config.Upstreams entries, the headers added on the way to requests of an
// upstream routed by name (its UpstreamConfig's), and query and form parameters so named.
func (r Request) String() string {
	var b strings.Builder
	b.WriteString(r.Method)
	if r.URL != nil {
		u := *r.URL
		u.User, u.RawQuery = nil, redactQuery(u.RawQuery)
		b.WriteString(" " + u.String())
	}
	for _, k := range slices.Sorted(maps.Keys(r.Header)) {
		for _, v := range r.Header[k] {
			if r.env.secret(k) {
				v = "[redacted]"
			}
			fmt.Fprintf(&b, "\n%s: %s", k, v)
		}
	}
	if len(r.Body) > 0 {
		body := r.Body
		if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "application/x-www-form-urlencoded" {
			body = []byte(redactQuery(string(body)))
		}
		const limit = 1 << 10
		more := ""
		if len(body) > limit {
			body, more = body[:limit], fmt.Sprintf("... (%d bytes)", len(r.Body))
		}
		if utf8.Valid(body) {
			fmt.Fprintf(&b, "\n\n%s%s", body, more)
		} else {
			fmt.Fprintf(&b, "\n\n%q%s", body, more)
		}
	}
	return b.String()
}

// redactQuery replaces the values of the credentials in a query or form body.
func redactQuery(q string) string {
	if q == "" {
		return q
	}
	parts := strings.Split(q, "&")
	for i, p := range parts {
		k, _, ok := strings.Cut(p, "=")
		if name, err := url.QueryUnescape(k); ok && err == nil && secretName(name) {
			parts[i] = k + "=[redacted]"
		}
	}
	return strings.Join(parts, "&")
}

// secretName reports whether a header or parameter of that name holds a credential.
func secretName(k string) bool {
	k = strings.ToLower(k)
	if k == "cookie" || k == "set-cookie" {
		return true
	}
	for _, w := range [...]string{"auth", "key", "token", "secret", "password", "passwd", "session", "signature", "credential"} {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// replayBody hands the handler a request body already read: its bytes, then the read's error
// or EOF.
type replayBody struct {
	r   *bytes.Reader
	err error
	c   io.Closer
}

func (b *replayBody) Read(p []byte) (int, error) {
	if b.r.Len() == 0 && b.err != nil {
		return 0, b.err
	}
	return b.r.Read(p)
}

func (b *replayBody) Close() error { return b.c.Close() }

// teeBody keeps what the handler reads of a request body.
type teeBody struct {
	io.ReadCloser
	buf bytes.Buffer
}

func (b *teeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.buf.Write(p[:n])
	return n, err
}
