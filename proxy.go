package httpfx

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// proxy returns the transport's Proxy function: ProxyURL if set, else the environment's if
// ProxyFromEnvironment, else nil (no proxy). Every error names the field.
func (c Config) proxy() (func(*http.Request) (*url.URL, error), error) {
	if c.ProxyURL == "" {
		if c.ProxyFromEnvironment {
			return http.ProxyFromEnvironment, nil
		}
		return nil, nil
	}
	u, err := url.Parse(c.ProxyURL)
	if err != nil {
		// url's error quotes the URL, which may hold credentials: say only what is wrong.
		return nil, fmt.Errorf("httpfx: config: ProxyURL is not a valid URL: want scheme://host:port")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		if u.User != nil || u.Opaque != "" { // "user:secret@host" parses as scheme "user": say nothing of it
			return nil, fmt.Errorf("httpfx: config: ProxyURL is not scheme://host:port with scheme http, https or socks5")
		}
		return nil, fmt.Errorf("httpfx: config: ProxyURL scheme %q: want http, https or socks5", u.Scheme)
	}
	if p := hostPortProblem(u); p != "" {
		return nil, fmt.Errorf("httpfx: config: ProxyURL %s: want scheme://host:port", p)
	}
	if u.Scheme == "https" && c.TLSServerName != "" {
		// net/http's handshake with an https proxy uses the transport's TLS settings, whose
		// ServerName would then be checked against the proxy's certificate.
		return nil, fmt.Errorf("httpfx: config: TLSServerName cannot be used with an https ProxyURL: the proxy's TLS handshake would expect %q too; use an http proxy (CONNECT), or leave TLSServerName empty", c.TLSServerName)
	}
	bypass, err := parseNoProxy(c.NoProxy)
	if err != nil {
		return nil, err
	}
	return func(r *http.Request) (*url.URL, error) {
		if bypass.match(r.URL) {
			return nil, nil
		}
		return u, nil
	}, nil
}

// proxyForLog describes the proxy setting without credentials.
func (c Config) proxyForLog() string {
	switch {
	case c.ProxyURL != "":
		if u, err := url.Parse(c.ProxyURL); err == nil {
			return u.Scheme + "://" + u.Host
		}
		return "invalid"
	case c.ProxyFromEnvironment:
		return "environment"
	default:
		return "none"
	}
}

// noProxy is a parsed NoProxy list.
type noProxy []noProxyEntry

type noProxyEntry struct {
	all    bool
	ipNet  *net.IPNet
	ip     net.IP
	domain string // lower case, without a leading dot
	subs   bool   // the entry had a leading dot: subdomains only
	port   string // empty: any port
}

func parseNoProxy(list string) (noProxy, error) {
	var np noProxy
	for _, raw := range strings.Split(list, ",") {
		s := strings.ToLower(strings.TrimSpace(raw))
		if s == "" {
			continue
		}
		if s == "*" {
			np = append(np, noProxyEntry{all: true})
			continue
		}
		var e noProxyEntry
		if _, ipNet, err := net.ParseCIDR(s); err == nil {
			e.ipNet = ipNet
			np = append(np, e)
			continue
		}
		host := s
		if h, p, err := net.SplitHostPort(s); err == nil {
			host, e.port = h, p
		}
		if strings.HasPrefix(host, "*.") { // as net/http's NO_PROXY: the same as ".example.com"
			host = host[1:]
		}
		if ip := net.ParseIP(host); ip != nil {
			e.ip = ip
		} else {
			e.subs = strings.HasPrefix(host, ".")
			e.domain = strings.TrimPrefix(host, ".")
			if e.domain == "" || strings.ContainsAny(e.domain, "/:@ ") {
				return nil, fmt.Errorf("httpfx: config: NoProxy entry %q: want a host, .domain or *.domain, IP address (each with an optional :port), CIDR range or *", strings.TrimSpace(raw))
			}
		}
		np = append(np, e)
	}
	return np, nil
}

// match reports whether u's host bypasses the proxy.
func (np noProxy) match(u *url.URL) bool {
	host, port := strings.ToLower(u.Hostname()), portOf(u)
	ip := net.ParseIP(host)
	for _, e := range np {
		switch {
		case e.all:
			return true
		case e.port != "" && e.port != port:
			continue
		case e.ipNet != nil:
			if ip != nil && e.ipNet.Contains(ip) {
				return true
			}
		case e.ip != nil:
			if ip != nil && e.ip.Equal(ip) {
				return true
			}
		case host == e.domain:
			if !e.subs {
				return true
			}
		case strings.HasSuffix(host, "."+e.domain):
			return true
		}
	}
	return false
}
