package httpfx

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// portOf returns u's port, or its scheme's default.
func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

// hostPort is the "host:port" net/http dials for u without a proxy.
func hostPort(u *url.URL) string { return net.JoinHostPort(u.Hostname(), portOf(u)) }

// sameOrigin reports whether a and b have the same scheme, host and port.
func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && strings.EqualFold(a.Hostname(), b.Hostname()) && portOf(a) == portOf(b)
}

// hostPortProblem says what is wrong with u's host and port, or returns "": a URL needs a
// host, and a port, if it has one, from 1 to 65535.
func hostPortProblem(u *url.URL) string {
	if u.Hostname() == "" {
		return "has no host"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("has port %q: want 1 to 65535", p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return "has an empty port: want 1 to 65535, or none"
	}
	return ""
}
