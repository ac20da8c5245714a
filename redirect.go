package httpfx

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// maxRedirects is how many redirects a client of httpfx follows, as net/http's default.
const maxRedirects = 10

// credentialHeaders are dropped from a redirect that leaves the first request's origin: the
// headers net/http treats as sensitive, proxy credentials included.
var credentialHeaders = [...]string{
	"Authorization", "Www-Authenticate", "Cookie", "Cookie2", "Proxy-Authorization", "Proxy-Authenticate",
}

// redirectPolicy returns the CheckRedirect of a client of httpfx: follow up to 10 redirects,
// as net/http does, and drop credential headers from a redirect to another origin. net/http
// keeps them for the same host on another port or scheme (https to http included) and for
// subdomains; httpfx keeps them only for the same host and port, or the same host moving
// from http to https.
//
// base is the base URL of an upstream client (nil for the shared client, which sends only
// absolute URLs). net/http resolves a Location against the previous request's URL, which for
// an upstream client's first request is still relative ("v1/x"), so "Location: y" would land
// on "/y" instead of "/base/v1/y". The policy resolves every hop against the previous hop's
// absolute URL instead, and makes the new URL absolute, so that the next hop resolves against
// it too.
func redirectPolicy(base *url.URL) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("httpfx: stopped after %d redirects", maxRedirects)
		}
		from := via[0].URL
		if base != nil {
			from = base.ResolveReference(from)
			if err := resolveRedirect(req, via[len(via)-1].URL, base); err != nil {
				return err
			}
		}
		if !keepsCredentials(from, req.URL) {
			for _, h := range credentialHeaders {
				req.Header.Del(h)
			}
		}
		return nil
	}
}

// resolveRedirect sets req.URL, the next hop of an upstream client's redirect chain, to the
// response's Location resolved against prev, the URL of the hop that answered it, made
// absolute against base.
func resolveRedirect(req *http.Request, prev, base *url.URL) error {
	if !prev.IsAbs() {
		prev = base.ResolveReference(prev)
	}
	loc := ""
	if req.Response != nil {
		loc = req.Response.Header.Get("Location")
	}
	if loc == "" { // net/http followed a redirect without a Location: keep what it resolved
		req.URL = prev.ResolveReference(req.URL)
		return nil
	}
	u, err := prev.Parse(loc)
	if err != nil { // net/http parsed it already; this cannot fail, but never guess a URL
		return fmt.Errorf("httpfx: redirect Location does not resolve against the previous URL: %w", err)
	}
	req.URL = u
	return nil
}

// keepsCredentials reports whether a redirect from one URL to another stays with the same
// party: the same host and port, or the same host upgraded from http to https.
func keepsCredentials(from, to *url.URL) bool {
	if !strings.EqualFold(from.Hostname(), to.Hostname()) {
		return false
	}
	switch {
	case from.Scheme == to.Scheme:
		return portOf(from) == portOf(to)
	case from.Scheme == "http" && to.Scheme == "https":
		return from.Port() == "" && to.Port() == ""
	default:
		return false
	}
}
