package httpfx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
)

// certHint explains mutual-TLS failures that net/http cannot: a TLS 1.3 server that rejects
// the client's missing certificate closes the connection right after the handshake, and the
// client sees only EOF, a reset, a TLS alert or, over HTTP/2, a connection that "could not be
// established". When no client certificate is configured, the hint notes which hosts asked for
// one, and a failure of a request to such a host, before it ever answered, says so (but a
// timeout, a cancellation or stop, which have reasons of their own).
//
// crypto/tls does not tell GetClientCertificate which host asks, but the handshake's context
// keeps the values of the request that dialled. Requests to an HTTPS host that has not yet
// answered carry their host in a context value; once a host has answered a request, it needs
// no hint (it served without a certificate) and its requests carry nothing: one atomic load
// and a map lookup per HTTPS request. It is safe for concurrent use.
type certHint struct {
	next     http.RoundTripper
	answered atomic.Pointer[map[string]struct{}] // hosts that answered; replaced whole on change

	mu    sync.Mutex
	asked map[string]struct{} // hosts that asked for a certificate
}

// certHostKey is the context key of the host (req.URL.Host) a request dials for.
type certHostKey struct{}

// hintMaxHosts bounds the hosts a certHint remembers in each set.
const hintMaxHosts = 4096

// installHint returns tc, cloned, with a certHint noting the hosts that ask for a client
// certificate, or tc and nil if a certificate or a certificate callback is configured
// (crypto/tls ignores Certificates once GetClientCertificate is set, so it runs after
// decorators had their say). tc is cloned so that a *tls.Config a decorator shares with other
// clients is never changed.
func installHint(tc *tls.Config) (*tls.Config, *certHint) {
	if tc == nil || len(tc.Certificates) > 0 || tc.GetClientCertificate != nil {
		return tc, nil
	}
	h := new(certHint)
	tc = tc.Clone()
	tc.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if host, ok := cri.Context().Value(certHostKey{}).(string); ok {
			h.mu.Lock()
			if len(h.asked) < hintMaxHosts {
				if h.asked == nil {
					h.asked = make(map[string]struct{})
				}
				h.asked[host] = struct{}{}
			}
			h.mu.Unlock()
		}
		return new(tls.Certificate), nil // none, as without this hook
	}
	return tc, h
}

var _ http.RoundTripper = (*certHint)(nil)

// RoundTrip sends req through next, marked if its host has not answered yet, and explains its
// failure if that host asked for a certificate.
func (h *certHint) RoundTrip(req *http.Request) (*http.Response, error) {
	req = h.mark(req)
	resp, err := h.next.RoundTrip(req)
	return resp, h.check(req, err)
}

// mark returns req with its host in its context if req goes to an HTTPS host that has not
// answered yet.
func (h *certHint) mark(req *http.Request) *http.Request {
	if req.URL.Scheme != "https" {
		return req
	}
	if m := h.answered.Load(); m != nil {
		if _, ok := (*m)[req.URL.Host]; ok {
			return req
		}
	}
	return req.WithContext(context.WithValue(req.Context(), certHostKey{}, req.URL.Host))
}

// check returns err, req's error (nil if it got a response), with the hint added if req's
// host asked for a certificate. A host that answered is remembered.
func (h *certHint) check(req *http.Request, err error) error {
	if req.URL.Scheme != "https" || req.Context().Value(certHostKey{}) == nil {
		return err
	}
	if err == nil {
		h.answer(req.URL.Host)
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, ErrClosed) || isTimeout(err) {
		return err // its own reason
	}
	h.mu.Lock()
	_, asked := h.asked[req.URL.Host]
	h.mu.Unlock()
	if !asked {
		return err
	}
	return fmt.Errorf("httpfx: %s asked for a client certificate and none is configured; if it requires one (mutual TLS), set TLSCertFile and TLSKeyFile: %w", req.URL.Host, err)
}

// answer records that host answered a request.
func (h *certHint) answer(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var m map[string]struct{}
	if p := h.answered.Load(); p != nil {
		if _, ok := (*p)[host]; ok || len(*p) >= hintMaxHosts {
			return
		}
		m = maps.Clone(*p)
	} else {
		m = make(map[string]struct{})
	}
	m[host] = struct{}{}
	h.answered.Store(&m)
}
