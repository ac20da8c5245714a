package httpfx

import (
	"crypto/tls"
	"fmt"
	"net/http"
)

// newTransport builds the tuned transport from cfg, what resolve derived from it, and dial,
// the DNS cache's. It starts from a zero Transport, not a clone of http.DefaultTransport,
// whose settings cfg covers anyway: whatever another package of the process changed on the
// default transport (a DialTLSContext, proxy headers) must not reach the shared pool.
func newTransport(cfg Config, r resolved, dial dialFunc) *http.Transport {
	t := &http.Transport{}
	t.DialContext = dial // DialTimeout, KeepAlive, Happy Eyeballs
	t.Proxy = r.proxy
	t.TLSClientConfig = r.tls
	t.TLSHandshakeTimeout = cfg.TLSHandshakeTimeout
	t.ResponseHeaderTimeout = cfg.ResponseHeaderTimeout
	t.ExpectContinueTimeout = cfg.ExpectContinueTimeout
	t.IdleConnTimeout = cfg.IdleConnTimeout
	t.MaxIdleConns = cfg.MaxIdleConns
	t.MaxIdleConnsPerHost = cfg.MaxIdleConnsPerHost
	t.MaxConnsPerHost = cfg.MaxConnsPerHost
	t.MaxResponseHeaderBytes = cfg.MaxResponseHeaderBytes
	t.DisableCompression = cfg.DisableCompression
	t.ForceAttemptHTTP2 = !cfg.DisableHTTP2
	if cfg.DisableHTTP2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // net/http's documented switch
	} else {
		t.HTTP2 = &http.HTTP2Config{
			SendPingTimeout:  cfg.HTTP2SendPingTimeout,
			PingTimeout:      cfg.HTTP2PingTimeout,
			WriteByteTimeout: cfg.HTTP2WriteByteTimeout,
		}
	}
	return t
}

// newClient builds the owned client over rt, the graph's round tripper. t is the
// *http.Transport in the graph: if it is the owned one (adjusted in place or not), its dials
// are counted and its connections kept healthy from now on; if the caller swapped in another,
// httpfx leaves it untouched and only drains its requests.
func (o *owner) newClient(t *http.Transport, rt http.RoundTripper) *http.Client {
	o.inUse = t
	next := rt
	if t == o.transport {
		dial := t.DialContext
		if dial == nil {
			dial = o.dns.Dial
		}
		t.DialContext = o.conns.wrap(dial)
		o.conns.health, o.conns.dns = o.health, o.dns
		o.health.idleOpen = o.conns.longestIdle
		o.conns.h2c = t.Protocols != nil && t.Protocols.UnencryptedHTTP2() && !t.Protocols.HTTP1()
		// Installed now, after decorators: roots or a verification of theirs turn it off.
		var reload bool
		if t.TLSClientConfig, reload = o.files.installCAReload(t.TLSClientConfig); !reload {
			o.log.Warn("httpfx TLSCAReload is off: a decorator changed the TLS roots or verification, which are used as they are")
		}
		// Installed now, after decorators: a certificate they configured turns it off.
		var hint *certHint
		if t.TLSClientConfig, hint = installHint(t.TLSClientConfig); hint != nil {
			hint.next, next = next, hint
		}
	} else {
		o.health = nil // a caller's transport: httpfx leaves its connections alone
	}
	if t != nil {
		o.headerTimeout, o.headerTimeoutName = t.ResponseHeaderTimeout, "the transport's ResponseHeaderTimeout"
		if t == o.transport && t.ResponseHeaderTimeout == o.cfg.ResponseHeaderTimeout {
			o.headerTimeoutName = "Config.ResponseHeaderTimeout"
		}
		if !http1OverTLS(t) {
			o.gate = &h2gate{next: next}
			o.conns.onLast = o.gate.forget
			next = o.gate
		}
	}
	o.nextType = fmt.Sprintf("%T", rt)
	o.rt = &roundTripper{o: o, next: next}
	o.client = &http.Client{Transport: o.rt, CheckRedirect: redirectPolicy(nil)}
	return o.client
}

// newUpstream builds the upstream client name from its configuration in code and the entry
// of Config.Upstreams that overrides it, over the shared client's round tripper.
func (o *owner) newUpstream(name string, code UpstreamConfig) (*http.Client, error) {
	// Each side on its own first: the merge canonicalizes header names, which would hide two
	// spellings of one header given on the same side.
	if err := code.validate(name, false); err != nil {
		return nil, err
	}
	cfg := code.overlay(o.cfg.Upstreams[name])
	if err := cfg.validate(name, true); err != nil {
		return nil, err
	}
	base, _ := parseBaseURL(cfg.BaseURL)
	u := &upstream{base: base, t: o.rt}
	u.name, u.timeout = name, cfg.Timeout
	u.timeoutErr = &timeoutError{what: fmt.Sprintf("upstream %q Timeout", name), d: cfg.Timeout}
	if u.timeout == 0 {
		u.timeout, u.timeoutErr = o.cfg.Timeout, o.timeoutErr
	}
	u.retry, u.attemptErr = o.cfg.Retry.overlay(cfg.Retry), o.attemptErr
	if d := cfg.Retry.AttemptTimeout; d != 0 {
		u.attemptErr = &timeoutError{what: fmt.Sprintf("upstream %q Retry.AttemptTimeout", name), d: d, waiting: "for the response headers"}
	}
	for k, v := range cfg.Headers {
		if http.CanonicalHeaderKey(k) == "Host" { // net/http sends Request.Host, never Header["Host"]
			u.host = v
			continue
		}
		if u.headers == nil {
			u.headers = make(http.Header, len(cfg.Headers))
		}
		u.headers.Set(k, v)
	}
	if cfg.MaxConnsPerHost > 0 {
		u.slots = make(chan struct{}, cfg.MaxConnsPerHost)
	}
	u.stats = o.stats.addUpstream(name)
	u.prewarm = cfg.Prewarm
	o.upstreams = append(o.upstreams, u)
	return &http.Client{Transport: u, CheckRedirect: redirectPolicy(base)}, nil
}

// http1OverTLS reports whether t speaks only HTTP/1.1 over TLS, as net/http decides: no
// protocol in TLSNextProto that a server could negotiate instead, and HTTP/2 off, by
// Protocols or else by an empty TLSNextProto (net/http's documented switch). A transport that
// leaves both unset may speak HTTP/2.
func http1OverTLS(t *http.Transport) bool {
	if len(t.TLSNextProto) > 0 {
		return false
	}
	if t.Protocols != nil {
		return !t.Protocols.HTTP2()
	}
	return t.TLSNextProto != nil
}
