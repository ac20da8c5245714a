package httpfx

import (
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Config configures the shared client and its transport. Field names follow net/http's where
// net/http has the same setting.
//
// Start from DefaultConfig and change what you need. Most fields' zero values keep net/http's
// meaning (no timeout, no limit, no proxy); the zero Config as a whole is invalid, because
// a zero MaxIdleConnsPerHost would be net/http's 2. A Config is a value; copies share the
// Upstreams map, which the loaders copy before they change it.
type Config struct {
	// Timeout bounds a whole request through the shared client, from admission until the
	// response body is read or closed, as http.Client.Timeout does, but for each request of a
	// redirect chain on its own (bound a chain with a deadline on the request's context), and
	// not for a 101 Switching Protocols stream after the upgrade. It is a deadline on the
	// request's own context, made only when the caller's context has no earlier one. A
	// Timeout of zero means no timeout. Default 30s: generous for RPC-style calls, still a
	// bound; streaming or large downloads should raise it (a request's own context can only
	// shorten it).
	Timeout time.Duration `yaml:"timeout" json:"timeout"`

	// DialTimeout bounds establishing one TCP connection. A DialTimeout of zero means no
	// timeout other than the operating system's. Default 5s (net/http's default is 30s): long
	// enough for two SYN retransmissions, short enough that a dead upstream fails fast.
	DialTimeout time.Duration `yaml:"dial_timeout" json:"dial_timeout"`

	// KeepAlive is the interval between TCP keep-alive probes on open connections, which
	// detect peers that vanished without closing. Zero means Go's default (15s). Default 30s,
	// as http.DefaultTransport.
	KeepAlive time.Duration `yaml:"keep_alive" json:"keep_alive"`

	// TLSHandshakeTimeout bounds the TLS handshake. Zero means no timeout. Default 10s, as
	// http.DefaultTransport.
	TLSHandshakeTimeout time.Duration `yaml:"tls_handshake_timeout" json:"tls_handshake_timeout"`

	// ResponseHeaderTimeout bounds the wait for the response headers, from the end of writing
	// the request (its body included), as net/http's Transport.ResponseHeaderTimeout, which it
	// sets: the dial, the TLS handshake and a slow upload do not count. Zero means no timeout.
	// Default 10s (http.DefaultTransport has none): a stuck upstream then fails before the
	// overall Timeout, with an error that says which phase hung. It is set on the owned
	// *http.Transport, so anything built on the graph's transport (a reverse proxy) has it too.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout" json:"response_header_timeout"`

	// ExpectContinueTimeout bounds the wait for a "100 Continue" after sending headers with
	// "Expect: 100-continue". Zero means the body is sent at once without waiting. Default 1s,
	// as http.DefaultTransport.
	ExpectContinueTimeout time.Duration `yaml:"expect_continue_timeout" json:"expect_continue_timeout"`

	// IdleConnTimeout is how long an idle pooled connection is kept before it is closed. Zero
	// means no limit. Default 90s, as http.DefaultTransport: shorter than most servers' idle
	// timeouts would cause needless reconnects, and the pool shrinks by itself after a burst.
	IdleConnTimeout time.Duration `yaml:"idle_conn_timeout" json:"idle_conn_timeout"`

	// MaxIdleConns bounds idle connections across all hosts. Zero means no limit. Default
	// 1024, enough for the per-host pool of two busy upstreams.
	MaxIdleConns int `yaml:"max_idle_conns" json:"max_idle_conns"`

	// MaxIdleConnsPerHost bounds idle connections kept per host. Zero is invalid: net/http
	// would take it as 2, and under concurrency almost every connection would then be closed
	// after one use. Default 512, equal to MaxConnsPerHost, so every connection opened during
	// a burst is kept for reuse instead of ending in TIME_WAIT.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host" json:"max_idle_conns_per_host"`

	// MaxConnsPerHost bounds connections per host, dialling, active and idle; requests beyond
	// it wait for a connection. Zero means no limit. Default 512: no more connections than the
	// idle pool can keep afterwards. Set it above MaxIdleConnsPerHost (or to zero) only if you
	// accept that connections beyond the idle pool are closed after use.
	MaxConnsPerHost int `yaml:"max_conns_per_host" json:"max_conns_per_host"`

	// MaxResponseHeaderBytes bounds the size of response headers. Zero means net/http's
	// default (10 MiB). Default 1 MiB: ample for real headers, and a tenth of the memory a
	// broken or hostile upstream can make each request hold.
	MaxResponseHeaderBytes int64 `yaml:"max_response_header_bytes" json:"max_response_header_bytes"`

	// DisableCompression stops the transport from asking for gzip and transparently
	// decompressing it. Default false, as net/http.
	DisableCompression bool `yaml:"disable_compression" json:"disable_compression"`

	// DisableHTTP2 restricts the transport to HTTP/1.1. Default false: HTTP/2 is negotiated
	// with TLS upstreams that offer it, as http.DefaultTransport does.
	DisableHTTP2 bool `yaml:"disable_http2" json:"disable_http2"`

	// ProxyFromEnvironment sends requests through the proxy named by HTTP_PROXY, HTTPS_PROXY
	// and NO_PROXY, as http.DefaultTransport does. False means no proxy. Default true.
	ProxyFromEnvironment bool `yaml:"proxy_from_environment" json:"proxy_from_environment"`

	// ProxyURL sends every request through this proxy, overriding ProxyFromEnvironment: an
	// http, https or socks5 URL, with credentials in it if the proxy needs them (they are
	// never logged). Unlike the environment's proxy, it applies to loopback hosts too. Empty
	// means ProxyFromEnvironment decides. Default empty.
	ProxyURL string `yaml:"proxy_url" json:"proxy_url"`

	// NoProxy lists the hosts that bypass ProxyURL, comma-separated, in NO_PROXY's syntax:
	// "example.com" (and its subdomains), ".example.com" or "*.example.com" (subdomains only),
	// an IP address, each of these optionally with ":port", a CIDR range such as "10.0.0.0/8"
	// (any port), or "*" for all. Empty means none. Default empty.
	NoProxy string `yaml:"no_proxy" json:"no_proxy"`

	// TLSMinVersion is the lowest TLS version accepted: "1.2" or "1.3". Empty means "1.2".
	// Default "1.2".
	TLSMinVersion string `yaml:"tls_min_version" json:"tls_min_version"`

	// TLSCAFile names a PEM file of root certificates that verify upstreams, added to the
	// system's roots unless TLSCAOnly is set. Empty means none. Default empty.
	TLSCAFile string `yaml:"tls_ca_file" json:"tls_ca_file"`

	// TLSCAPEM holds root certificates as PEM text, as TLSCAFile does. Empty means none.
	// Default empty.
	TLSCAPEM string `yaml:"tls_ca_pem" json:"tls_ca_pem"`

	// TLSCAOnly verifies upstreams with only the roots of TLSCAFile and TLSCAPEM, not the
	// system's. Default false.
	TLSCAOnly bool `yaml:"tls_ca_only" json:"tls_ca_only"`

	// TLSCertFile names a PEM file of a client certificate, presented to upstreams that ask
	// for one (mutual TLS). Set it with TLSKeyFile or not at all. Default empty.
	TLSCertFile string `yaml:"tls_cert_file" json:"tls_cert_file"`

	// TLSKeyFile names the PEM file of TLSCertFile's private key. Default empty.
	TLSKeyFile string `yaml:"tls_key_file" json:"tls_key_file"`

	// TLSSessionCacheSize is how many TLS sessions the client keeps to resume, in one cache
	// shared by the shared client and every upstream client (tls.NewLRUClientSessionCache): a
	// new connection to a server it has talked to resumes a session, skipping the certificate
	// exchange and its verification, several times cheaper than a full handshake. httpfx
	// opens new connections on purpose (MaxConnLifetime, idle retirement, DNS changes) and
	// under every burst. Zero turns the cache off. Default 1024: room for a process talking to
	// many upstreams (a session a server name). A TLS config a decorator supplies keeps its own.
	TLSSessionCacheSize int `yaml:"tls_session_cache_size" json:"tls_session_cache_size"`

	// TLSReloadInterval is how often, at most, the TLS files are checked for a new version:
	// TLSCertFile and TLSKeyFile, and TLSCAFile with TLSCAReload. A handshake that needs them
	// re-reads a file whose size or modification time changed, so that a certificate renewed
	// on disk (cert-manager, SPIFFE) is presented by every new handshake within the interval,
	// without a restart; a version that does not load keeps the last good one, and is logged
	// once. Zero reads the files once, at start. Default 5s.
	TLSReloadInterval time.Duration `yaml:"tls_reload_interval" json:"tls_reload_interval"`

	// TLSCAReload makes new versions of TLSCAFile apply to new handshakes, as TLSReloadInterval
	// says. httpfx then verifies servers itself, with crypto/tls's VerifyConnection, which is
	// not told the address of a host given as an IP address: such a host needs TLSServerName.
	// A VerifyConnection a decorator sets runs after that verification; roots a decorator sets
	// are used as they are, without reload. Default false: TLSCAFile is read once, at start.
	TLSCAReload bool `yaml:"tls_ca_reload" json:"tls_ca_reload"`

	// TLSServerName overrides the name sent in SNI and verified in upstream certificates.
	// net/http uses the same TLS settings for an https proxy, so it cannot be combined with an
	// https ProxyURL (Validate says so; an https proxy from the environment would fail its
	// handshake). Empty means the request's host. Default empty.
	TLSServerName string `yaml:"tls_server_name" json:"tls_server_name"`

	// TLSInsecureSkipVerify accepts any upstream certificate, which lets anyone on the path
	// read and change the traffic. Never use it in production: start logs a warning every
	// time it is set. Default false.
	TLSInsecureSkipVerify bool `yaml:"tls_insecure_skip_verify" json:"tls_insecure_skip_verify"`

	// UserAgent is set as the User-Agent header of requests that have none. Empty means Go's
	// default ("Go-http-client/1.1"). Default empty.
	UserAgent string `yaml:"user_agent" json:"user_agent"`

	// MaxConnLifetime retires a connection older than it the next time it is taken from the
	// idle pool for a request, so that traffic follows a DNS change or a load balancer's new
	// members even on connections that never go idle long enough to close. Each connection
	// gets its own lifetime between 90% and 100% of it, so that a pool does not reconnect all
	// at once. A request in flight is never cut; the request that would have reused the
	// connection goes on another. HTTP/2 connections are not retired by it (net/http offers no
	// way to stop new streams on one of its HTTP/2 connections; see docs/design.md). Zero means no
	// limit. Default 5m: a DNS change is followed within minutes by this alone (the DNS cache
	// follows it within DNSTTL for connections to addresses that DNS drops), at the cost of one
	// handshake per connection every few minutes.
	MaxConnLifetime time.Duration `yaml:"max_conn_lifetime" json:"max_conn_lifetime"`

	// DNSTTL is how long a host's looked-up addresses are used before they are looked up
	// again. Names in use are looked up again in the background before their answer expires,
	// so no request waits for a lookup of a known name, and connections to an address that an
	// answer drops are retired when next idle. Zero turns the cache off: every dial looks up
	// the name, as net/http does, and connections follow DNS only through MaxConnLifetime.
	// Default 10s, as aiohttp's ttl_dns_cache: short enough to follow DNS changes quickly, and
	// one background lookup per name in use every few seconds costs nothing measurable.
	DNSTTL time.Duration `yaml:"dns_ttl" json:"dns_ttl"`

	// DNSStaleTTL is how long past DNSTTL the last good answer for a host is still used while
	// the resolver fails, so that a resolver outage does not fail every new connection. Zero
	// means a failed lookup fails the dial. Default 5m.
	DNSStaleTTL time.Duration `yaml:"dns_stale_ttl" json:"dns_stale_ttl"`

	// HTTP2SendPingTimeout is how long an HTTP/2 connection may receive no frame before the
	// client sends a ping to check it (http.HTTP2Config.SendPingTimeout). A busy, healthy
	// connection receives frames and is never pinged. Zero means no health check. Default
	// 15s: with HTTP2PingTimeout, a dead connection (a peer gone behind a NAT, a half-open
	// connection) is found within 30s instead of hanging its requests until their timeout.
	HTTP2SendPingTimeout time.Duration `yaml:"http2_send_ping_timeout" json:"http2_send_ping_timeout"`

	// HTTP2PingTimeout is how long the client waits for the answer to a ping before it closes
	// the connection, failing its requests (http.HTTP2Config.PingTimeout). Zero means
	// net/http's default (15s). Default 15s.
	HTTP2PingTimeout time.Duration `yaml:"http2_ping_timeout" json:"http2_ping_timeout"`

	// HTTP2WriteByteTimeout closes an HTTP/2 connection when a write makes no progress for
	// this long (http.HTTP2Config.WriteByteTimeout): a peer that stopped reading. Zero means
	// no timeout. Default 15s.
	HTTP2WriteByteTimeout time.Duration `yaml:"http2_write_byte_timeout" json:"http2_write_byte_timeout"`

	// DrainTimeout bounds how long stop waits for in-flight requests (and their response
	// bodies) before it closes their connections. The stop context bounds it too, whichever
	// ends first. Zero means only the stop context bounds it. Default 10s, below fx's default
	// stop timeout of 15s so that stop can still cut, close and report in time.
	DrainTimeout time.Duration `yaml:"drain_timeout" json:"drain_timeout"`

	// Retry says when a request is sent again, for the shared client and every upstream
	// client; see RetryConfig. The zero RetryConfig sends each request once.
	Retry RetryConfig `yaml:"retry" json:"retry"`

	// Upstreams configures, by name, the upstream clients that Upstream declares; an entry's
	// non-zero fields override the UpstreamConfig given in code. Nil means none.
	Upstreams map[string]UpstreamConfig `yaml:"upstreams" json:"upstreams"`
}

// DefaultConfig returns the configuration the Module uses unless it is replaced: net/http's
// default transport settings, with the per-host pool sized for concurrency, every timeout set
// and HTTP/2 kept on. Each field's documentation gives its default and why. It returns a new
// value on every call.
func DefaultConfig() Config {
	return Config{
		Timeout:                30 * time.Second,
		DialTimeout:            5 * time.Second,
		KeepAlive:              30 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		IdleConnTimeout:        90 * time.Second,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    512,
		MaxConnsPerHost:        512,
		MaxResponseHeaderBytes: 1 << 20,
		ProxyFromEnvironment:   true,
		TLSMinVersion:          "1.2",
		TLSSessionCacheSize:    1024,
		TLSReloadInterval:      5 * time.Second,
		DrainTimeout:           10 * time.Second,
		MaxConnLifetime:        5 * time.Minute,
		DNSTTL:                 10 * time.Second,
		DNSStaleTTL:            5 * time.Minute,
		HTTP2SendPingTimeout:   15 * time.Second,
		HTTP2PingTimeout:       15 * time.Second,
		HTTP2WriteByteTimeout:  15 * time.Second,
		Retry: RetryConfig{
			MaxAttempts:     3,
			Backoff:         25 * time.Millisecond,
			MaxBackoff:      time.Second,
			RetryAfterMax:   2 * time.Second,
			MaxBufferBytes:  64 << 10,
			BudgetPercent:   20,
			BudgetPerSecond: 10,
		},
	}
}

// Validate reports every problem of c, each in an error that names the field and says what
// is allowed: negative durations and sizes, contradictory pool limits, a bad proxy URL or
// NoProxy entry, unreadable or mismatched TLS files, bad upstream entries. It reads the TLS
// files it names. It returns nil if c is usable. New and the Module call it.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

// maxDuration bounds every duration of the configuration, so that deadlines computed on
// httpfx's clocks (now plus a duration, or a multiple of a TTL) never overflow: a duration of
// math.MaxInt64, a common way of saying "never", would otherwise end every request at once.
const maxDuration = 10 * 365 * 24 * time.Hour

// resolved is what a valid Config derives for the transport.
type resolved struct {
	tls   *tls.Config
	files *tlsFiles // keeps the TLS files current; nil if none are
	proxy func(*http.Request) (*url.URL, error)
}

// resolve checks c as Validate documents and derives the TLS and proxy settings, so that
// they are built once.
func (c Config) resolve() (resolved, error) {
	var r resolved
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("httpfx: config: %s %s", field, fmt.Sprintf(format, args...)))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"Timeout", c.Timeout},
		{"DialTimeout", c.DialTimeout},
		{"KeepAlive", c.KeepAlive},
		{"TLSHandshakeTimeout", c.TLSHandshakeTimeout},
		{"ResponseHeaderTimeout", c.ResponseHeaderTimeout},
		{"ExpectContinueTimeout", c.ExpectContinueTimeout},
		{"IdleConnTimeout", c.IdleConnTimeout},
		{"DrainTimeout", c.DrainTimeout},
		{"MaxConnLifetime", c.MaxConnLifetime},
		{"DNSTTL", c.DNSTTL},
		{"DNSStaleTTL", c.DNSStaleTTL},
		{"HTTP2SendPingTimeout", c.HTTP2SendPingTimeout},
		{"HTTP2PingTimeout", c.HTTP2PingTimeout},
		{"HTTP2WriteByteTimeout", c.HTTP2WriteByteTimeout},
		{"TLSReloadInterval", c.TLSReloadInterval},
	} {
		switch {
		case d.v < 0:
			bad(d.name, "is %v: want zero (no timeout) or a positive duration", d.v)
		case d.v > maxDuration:
			bad(d.name, "is %v: want at most %v (ten years); zero means no timeout", d.v, maxDuration)
		}
	}
	for _, n := range []struct {
		name string
		v    int64
	}{
		{"MaxIdleConns", int64(c.MaxIdleConns)},
		{"MaxIdleConnsPerHost", int64(c.MaxIdleConnsPerHost)},
		{"MaxConnsPerHost", int64(c.MaxConnsPerHost)},
		{"MaxResponseHeaderBytes", c.MaxResponseHeaderBytes},
		{"TLSSessionCacheSize", int64(c.TLSSessionCacheSize)},
	} {
		if n.v < 0 {
			bad(n.name, "is %d: want zero (the default or no limit) or a positive number", n.v)
		}
	}
	if c.MaxIdleConnsPerHost == 0 {
		bad("MaxIdleConnsPerHost", "is 0, which net/http takes as 2 idle connections per host, so that almost every connection is thrown away under concurrency: want a positive number (DefaultConfig has %d)",
			DefaultConfig().MaxIdleConnsPerHost)
	}
	if c.MaxIdleConns > 0 && c.MaxIdleConnsPerHost > c.MaxIdleConns {
		bad("MaxIdleConnsPerHost", "(%d) exceeds MaxIdleConns (%d): the per-host idle pool could never fill; raise MaxIdleConns or lower MaxIdleConnsPerHost",
			c.MaxIdleConnsPerHost, c.MaxIdleConns)
	}
	if strings.ContainsFunc(c.UserAgent, isControl) {
		bad("UserAgent", "contains a control character: want printable text")
	}
	var err error
	if r.proxy, err = c.proxy(); err != nil {
		errs = append(errs, err)
	}
	if r.tls, r.files, err = c.tlsConfig(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Retry.validate("Retry", true); err != nil {
		errs = append(errs, err)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if err := c.Upstreams[name].validate(name, false); err != nil {
			errs = append(errs, err)
		}
	}
	return r, errors.Join(errs...)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
