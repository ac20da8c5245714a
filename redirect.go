package httpfx

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// maxRedirects is how many redirects a client of httpfx follows, as net/http's default.
const maxRedirects = 10

// credentialHeaders are dropped from a redirect that leaves the first request's origin.
var credentialHeaders = [...]string{"Authorization", "Www-Authenticate", "Cookie", "Cookie2"}

// redirectPolicy returns the CheckRedirect of a client of httpfx: follow up to 10 redirects,
// as net/http does, and drop credential headers from a redirect to another origin. net/http
// keeps them for the same host on another port or scheme (https to http included) and for
// subdomains; httpfx keeps them only for the same host and port, or the same host moving
// from http to https. Relative URLs resolve against base (nil for absolute-only clients).
func redirectPolicy(base *url.URL) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("httpfx: stopped after %d redirects", maxRedirects)
		}
		from, to := via[0].URL, req.URL
		if base != nil {
			from, to = base.ResolveReference(from), base.ResolveReference(to)
		}
		if !keepsCredentials(from, to) {
			for _, h := range credentialHeaders {
				req.Header.Del(h)
			}
		}
		return nil
	}
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
