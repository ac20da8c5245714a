package httpfx

import (
	"context"
	"crypto/tls"
	"maps"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h2gate stops a cold burst of requests to an HTTPS host from dialling a connection each.
//
// net/http cannot know before the first TLS handshake with a host whether it speaks HTTP/2,
// so N concurrent first requests dial N connections; if the host speaks HTTP/2, all but one
// are closed again (golang/go#27753): a handshake storm and TIME_WAIT churn on every cold
// start. The gate lets the first request to a host it does not know go alone (the leader)
// until it has its response, or h2Settle past its connection, or at once if its connection
// negotiated HTTP/1.1 (nothing can be shared then); the others (followers) wait,
// as long as their context allows, then go: over the HTTP/2 connection now pooled, or, for an
// HTTP/1.1 host, dialling as they need. A leader whose dial or handshake fails lets its
// followers all go at once, each to its own dial as net/http would send them, rather than one
// after another (a host that does not answer would otherwise cost each follower a handshake
// timeout more); a leader whose own context ended hands the lead to a follower. The host is
// forgotten when its last connection closes, so that a burst after an idle spell is gated too.
// A WebSocket upgrade, which net/http sends over an HTTP/1.1 connection of its own, is never
// gated.
//
// A known host costs one atomic load and a map lookup per request. It is safe for concurrent
// use.
type h2gate struct {
	next  http.RoundTripper
	known atomic.Pointer[map[string]struct{}] // hosts that need no gate; replaced whole on change

	mu      sync.Mutex
	leading map[string]*h2lead // hosts whose leader is on its way
}

// h2lead is the lead of one host.
type h2lead struct {
	done   chan struct{} // closed when the lead ends
	timer  *time.Timer   // ends the lead h2Settle past the leader's connection; nil before
	failed bool          // the host failed the leader: followers go ungated; set before done is closed
}

const (
	// h2Settle is how long followers wait past the leader's connection for its response: by
	// then an HTTP/2 connection has the server's settings (before them, net/http assumes 100
	// streams and dials for the rest).
	h2Settle = 50 * time.Millisecond

	// h2MaxHosts bounds the hosts the gate remembers; past it, new hosts are not gated.
	h2MaxHosts = 4096
)

var _ http.RoundTripper = (*h2gate)(nil)

// RoundTrip sends an HTTPS request through next once the gate lets it go.
func (g *h2gate) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return g.next.RoundTrip(req)
	}
	req, lead, err := g.enter(req)
	if err != nil {
		if req.Body != nil {
			req.Body.Close() // as a RoundTripper must
		}
		return nil, err
	}
	resp, err := g.next.RoundTrip(req)
	if lead != nil {
		g.leave(req.URL.Host, lead, err == nil, err != nil && req.Context().Err() == nil)
	}
	return resp, err
}

// enter returns at once for a host that needs no gate. Otherwise it makes req the leader of
// its host, returning the lead (and a request that reports its connection), or waits for the
// current leader and tries again. A leader must call leave when its round trip ends.
func (g *h2gate) enter(req *http.Request) (*http.Request, *h2lead, error) {
	key := req.URL.Host
	for {
		if g.isKnown(key) || isWebSocket(req) {
			return req, nil, nil
		}
		g.mu.Lock()
		l := g.leading[key]
		if l == nil {
			if g.isKnown(key) || len(g.leading)+len(g.knownMap()) >= h2MaxHosts {
				g.mu.Unlock()
				return req, nil, nil
			}
			l = &h2lead{done: make(chan struct{})}
			if g.leading == nil {
				g.leading = make(map[string]*h2lead)
			}
			g.leading[key] = l
			g.mu.Unlock()
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
				if !speaksH2(info.Conn) {
					// Nothing to share: HTTP/1.1 followers dial as they need, at once.
					g.leave(key, l, true, false)
					return
				}
				g.mu.Lock()
				defer g.mu.Unlock()
				if g.leading[key] == l && l.timer == nil {
					l.timer = time.AfterFunc(h2Settle, func() { g.leave(key, l, true, false) })
				}
			}}
			return req.WithContext(httptrace.WithClientTrace(req.Context(), trace)), l, nil
		}
		g.mu.Unlock()
		select {
		case <-l.done:
			if l.failed {
				return req, nil, nil
			}
		case <-req.Context().Done():
			return req, nil, context.Cause(req.Context())
		}
	}
}

// leave ends the lead l of key, if it still runs: with ok, the host needs no gate from now on;
// with failed, the host failed the leader and its followers go ungated; with neither, a
// follower leads next.
func (g *h2gate) leave(key string, l *h2lead, ok, failed bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leading[key] != l {
		return
	}
	delete(g.leading, key)
	l.failed = failed
	if l.timer != nil {
		l.timer.Stop()
	}
	close(l.done)
	if ok {
		m := maps.Clone(g.knownMap())
		if m == nil {
			m = make(map[string]struct{})
		}
		m[key] = struct{}{}
		g.known.Store(&m)
	}
}

// forget drops the host at addr ("host:port"), whose last connection closed.
func (g *h2gate) forget(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	keys := []string{addr}
	if host, port, err := net.SplitHostPort(addr); err == nil && port == "443" {
		keys = append(keys, host)
	}
	m := g.knownMap()
	var next map[string]struct{}
	for _, k := range keys {
		if _, ok := m[k]; ok {
			if next == nil {
				next = maps.Clone(m)
			}
			delete(next, k)
		}
	}
	if next != nil {
		g.known.Store(&next)
	}
}

func (g *h2gate) knownMap() map[string]struct{} {
	if m := g.known.Load(); m != nil {
		return *m
	}
	return nil
}

func (g *h2gate) isKnown(key string) bool {
	_, ok := g.knownMap()[key]
	return ok
}

// speaksH2 reports whether c negotiated HTTP/2 with ALPN. A connection that does not say (not
// TLS) counts as HTTP/2, so that the gate keeps its settle time.
func speaksH2(c net.Conn) bool {
	if tc, ok := c.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return tc.ConnectionState().NegotiatedProtocol == "h2"
	}
	return true
}

// isWebSocket reports whether req asks for a WebSocket upgrade, which net/http sends over a
// connection of its own that never speaks HTTP/2.
func isWebSocket(req *http.Request) bool {
	return strings.EqualFold(req.Header.Get("Upgrade"), "websocket")
}
