package httpfx

import (
	"context"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"time"
)

// h2gate stops a cold burst of requests to an HTTPS host from dialling a connection each.
//
// net/http cannot know before the first TLS handshake with a host whether it speaks HTTP/2,
// so N concurrent first requests dial N connections; if the host speaks HTTP/2, all but one
// are closed again (golang/go#27753): a handshake storm and TIME_WAIT churn on every cold
// start. The gate lets the first request to a host whose protocol is unknown go alone until it
// has its connection; the others wait (as long as their context allows), then go: over the
// HTTP/2 connection now pooled, or, for an HTTP/1.1 host, dialling as they need. The host is
// forgotten when its last connection closes, so that a burst after an idle spell is gated
// too. A WebSocket upgrade, which net/http sends over an HTTP/1.1 connection of its own, is
// never gated. A known host costs a read lock and a map lookup per request. It is safe for
// concurrent use.
type h2gate struct {
	mu    sync.RWMutex
	hosts map[string]*h2host // by the request URL's host (and port, if it has one)
}

// h2Settle is how long followers wait past the leader's connection for its response.
const h2Settle = 50 * time.Millisecond

// h2host is what the gate knows of one host.
type h2host struct {
	known   bool          // the leader got a connection: HTTP/2 is pooled, or HTTP/1.1 needs no gate
	leading chan struct{} // closed when the leading request has its connection or ends; nil if none
}

// enter returns at once for a host already known. Otherwise it makes req the leader of its
// host, or waits for the current leader. A leader gets a request that reports its connection
// and must call leave with it when its round trip ends.
func (g *h2gate) enter(req *http.Request) (_ *http.Request, leader bool, err error) {
	key := req.URL.Host
	for {
		g.mu.RLock()
		st := g.hosts[key]
		known := st != nil && st.known
		g.mu.RUnlock()
		if known || isWebSocket(req) { // a WebSocket upgrade always dials HTTP/1.1 of its own
			return req, false, nil
		}
		g.mu.Lock()
		if g.hosts == nil {
			g.hosts = make(map[string]*h2host)
		}
		st = g.hosts[key]
		if st == nil {
			st = new(h2host)
			g.hosts[key] = st
		}
		if st.known {
			g.mu.Unlock()
			return req, false, nil
		}
		if st.leading == nil {
			st.leading = make(chan struct{})
			g.mu.Unlock()
			// Followers go when the leader has its response headers: by then an HTTP/2
			// connection is pooled and has the server's settings (until they arrive, net/http
			// assumes 100 streams and dials for the rest). A slow response holds them only
			// h2Settle past the connection.
			trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
				time.AfterFunc(h2Settle, func() { g.release(key, true) })
			}}
			return req.WithContext(httptrace.WithClientTrace(req.Context(), trace)), true, nil
		}
		wait := st.leading
		g.mu.Unlock()
		select {
		case <-wait:
		case <-req.Context().Done():
			return req, false, context.Cause(req.Context())
		}
	}
}

// leave ends the lead of req's host when the leader's round trip ends: with ok, followers go;
// without, one of them leads next.
func (g *h2gate) leave(req *http.Request, ok bool) { g.release(req.URL.Host, ok) }

// release ends the lead of key; known says whether a connection was seen.
func (g *h2gate) release(key string, known bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st := g.hosts[key]; st != nil && st.leading != nil {
		st.known = known
		close(st.leading)
		st.leading = nil
	}
}

// forget drops what the gate knows of the host at addr ("host:port"), whose last connection
// closed.
func (g *h2gate) forget(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	forget := func(key string) {
		if st := g.hosts[key]; st != nil && st.leading == nil {
			delete(g.hosts, key)
		}
	}
	forget(addr)
	if host, port, err := net.SplitHostPort(addr); err == nil && port == "443" {
		forget(host)
	}
}

// isWebSocket reports whether req asks for a WebSocket upgrade, which net/http sends over a
// connection of its own that never speaks HTTP/2.
func isWebSocket(req *http.Request) bool {
	return strings.EqualFold(req.Header.Get("Upgrade"), "websocket")
}
