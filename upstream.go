package httpfx

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// UpstreamConfig configures a named upstream client (see Upstream). Its zero value is not
// usable: BaseURL is required.
type UpstreamConfig struct {
	// BaseURL is the upstream's http or https URL, such as "https://payments.internal/api/".
	// Its path, if any, ends in "/". Relative request URLs resolve against it as a browser
	// resolves links: "v1/charges" appends to its path, "/v1/charges" replaces the path,
	// "//host:port/x" takes its scheme.
	// A redirect's Location resolves against the absolute URL of the hop that answered it, so
	// "Location: y" after "v1/x" lands on "/api/v1/y". It must not hold credentials (use
	// Headers), a query or a fragment.
	BaseURL string `yaml:"base_url" json:"base_url"`

	// Headers are set on every request to BaseURL's scheme and host that does not set them
	// itself, and never on a request to any other host, redirects included: the place for
	// credentials and API versions. "Host" sets the request's Host (a virtual host behind a
	// load balancer) unless the caller set another; Content-Length, Transfer-Encoding and
	// Trailer, which net/http derives from the request, are refused. Their values are never
	// logged. Nil means none.
	Headers map[string]string `yaml:"headers" json:"headers"`

	// Timeout bounds a whole request to this upstream, body included, instead of
	// Config.Timeout. Zero means Config.Timeout.
	Timeout time.Duration `yaml:"timeout" json:"timeout"`

	// MaxConnsPerHost bounds this upstream's requests in flight, and so the HTTP/1.1
	// connections it holds of the shared pool at once; requests beyond it wait, as long as
	// their context allows. Zero means only Config.MaxConnsPerHost bounds it.
	MaxConnsPerHost int `yaml:"max_conns_per_host" json:"max_conns_per_host"`

	// Prewarm is how many connections to BaseURL's origin httpfx opens at start, so that the
	// first burst after a deploy pays no TCP or TLS handshake per caller. It sends no request,
	// waits at most half of what is left of the start context, so that later hooks still
	// start, and never fails start: an upstream that is down or slow is logged, and its
	// requests dial as they need. An origin with connections open already (a component
	// called it while the graph was built) is not pre-warmed. Upstreams that share an
	// origin get the largest of their counts; an HTTP/2 upstream keeps one connection, as
	// net/http does (set 1 for one). Zero means none.
	Prewarm int `yaml:"prewarm" json:"prewarm"`

	// Retry overrides Config.Retry for this upstream, field by field: a field that is not zero
	// (a list that is not empty) wins. MaxAttempts 1 turns retries off for it. The budget's
	// fields belong to Config.Retry only.
	Retry RetryConfig `yaml:"retry" json:"retry"`
}

// upstreamName is what an upstream name may look like: it is a YAML key, part of an
// environment variable name (with "__" as the separator) and a log field.
var upstreamName = regexp.MustCompile(`^[a-z]([a-z0-9-]|_[a-z0-9-])*$`)

// headerToken is an HTTP header name (RFC 9110 token).
var headerToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// validate reports the problems of u, naming the upstream and the field. A file entry
// (partial) may leave BaseURL to the code's UpstreamConfig.
func (u UpstreamConfig) validate(name string, complete bool) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("httpfx: config: upstream %q: %s", name, fmt.Sprintf(format, args...)))
	}
	if !upstreamName.MatchString(name) {
		bad("want a name of lower-case letters, digits, '-' and single '_', starting with a letter")
	}
	if u.BaseURL != "" || complete {
		if _, err := parseBaseURL(u.BaseURL); err != nil {
			bad("BaseURL %v", err)
		}
	}
	seen := make(map[string]string, len(u.Headers))
	for _, k := range slices.Sorted(maps.Keys(u.Headers)) {
		if !headerToken.MatchString(k) {
			bad("Headers: %q is not a valid header name", k)
		}
		if other, dup := seen[http.CanonicalHeaderKey(k)]; dup {
			bad("Headers: %q and %q name the same header: keep one", other, k)
		}
		seen[http.CanonicalHeaderKey(k)] = k
		if strings.ContainsFunc(u.Headers[k], isControl) {
			bad("Headers: the value of %q contains a control character", k)
		}
		switch http.CanonicalHeaderKey(k) {
		case "Content-Length", "Transfer-Encoding", "Trailer":
			bad("Headers: %q is set by net/http from the request itself, never from Headers: remove it", k)
		}
	}
	switch {
	case u.Timeout < 0:
		bad("Timeout is %v: want zero (Config.Timeout) or a positive duration", u.Timeout)
	case u.Timeout > maxDuration:
		bad("Timeout is %v: want at most %v (ten years); zero means Config.Timeout", u.Timeout, maxDuration)
	}
	if u.MaxConnsPerHost < 0 {
		bad("MaxConnsPerHost is %d: want zero (no extra limit) or a positive number", u.MaxConnsPerHost)
	}
	if u.Prewarm < 0 {
		bad("Prewarm is %d: want zero (none) or a positive number of connections", u.Prewarm)
	}
	if err := u.Retry.validate(fmt.Sprintf("upstream %q Retry", name), false); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// overlay returns u with the fields that file sets. Headers merge by canonical name, the
// file's value winning; each side has been validated to name every header once, so the result
// does not depend on map order.
func (u UpstreamConfig) overlay(file UpstreamConfig) UpstreamConfig {
	if file.BaseURL != "" {
		u.BaseURL = file.BaseURL
	}
	if len(file.Headers) > 0 {
		h := make(map[string]string, len(u.Headers)+len(file.Headers))
		for _, m := range []map[string]string{u.Headers, file.Headers} {
			for _, k := range slices.Sorted(maps.Keys(m)) {
				h[http.CanonicalHeaderKey(k)] = m[k]
			}
		}
		u.Headers = h
	}
	if file.Timeout != 0 {
		u.Timeout = file.Timeout
	}
	if file.MaxConnsPerHost != 0 {
		u.MaxConnsPerHost = file.MaxConnsPerHost
	}
	if file.Prewarm != 0 {
		u.Prewarm = file.Prewarm
	}
	u.Retry = u.Retry.overlay(file.Retry)
	return u
}

// parseBaseURL parses an upstream's base URL. Its errors do not repeat the URL, which could
// hold credentials.
func parseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("is empty: want the upstream's http or https URL")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, errors.New("is not a valid URL: want http(s)://host[:port][/path/]")
	case u.Scheme != "http" && u.Scheme != "https" && (u.User != nil || u.Opaque != ""):
		return nil, errors.New("is not http(s)://host[:port][/path/]") // "user:secret@host" parses as scheme "user"
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case hostPortProblem(u) != "":
		return nil, errors.New(hostPortProblem(u) + ": want http(s)://host[:port][/path/]")
	case u.User != nil:
		return nil, errors.New("holds credentials: put them in Headers, which go only to this upstream")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("has a query or fragment: want http(s)://host[:port][/path/]")
	case u.Path != "" && !strings.HasSuffix(u.Path, "/"):
		return nil, errors.New(`has a path that does not end in "/": a relative request URL such as "v1/x" would replace its last segment, as a browser resolves links; end the path with "/" (https://host/api/)`)
	}
	return u, nil
}

// upstream is the RoundTripper of an upstream client. It resolves relative URLs against the
// base, adds the headers to requests for the base's origin only, bounds requests in flight,
// and sends through the shared client's round tripper with its own timeout. It is safe for
// concurrent use.
type upstream struct {
	sender                // its name, Timeout, connection limit and counters, for its requests
	base    *url.URL      // the base URL
	headers http.Header   // canonical names; nil if none
	host    string        // the Host header to send to the base's origin; empty: the URL's
	prewarm int           // connections to open at start
	t       *roundTripper // the shared client's
}

var _ http.RoundTripper = (*upstream)(nil)

// RoundTrip implements http.RoundTripper.
func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "" { // relative, or scheme-relative ("//host/x"): the base's scheme
		r := *req
		r.URL = u.base.ResolveReference(req.URL)
		req = &r
	}
	if u.host != "" && (req.Host == "" || req.Host == req.URL.Host) && sameOrigin(req.URL, u.base) {
		r := *req // the caller's own Host, if it set one, stays
		r.Host = u.host
		req = &r
	}
	if u.headers != nil && sameOrigin(req.URL, u.base) {
		h := req.Header.Clone()
		if h == nil {
			h = make(http.Header, len(u.headers))
		}
		for k, v := range u.headers {
			if _, set := h[k]; !set {
				h[k] = v
			}
		}
		r := *req
		r.Header = h
		req = &r
	}
	return u.t.roundTrip(req, &u.sender)
}

// CloseIdleConnections is ignored and counted, as on the shared client: an upstream client
// shares the process's pool.
func (u *upstream) CloseIdleConnections() { u.t.CloseIdleConnections() }
