package httpfx_test

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"go.yaml.in/yaml/v3"
)

func TestDefaultConfig(t *testing.T) {
	t.Parallel()
	c := httpfx.DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig is invalid: %v", err)
	}
	if c.MaxIdleConnsPerHost <= 2 {
		t.Errorf("MaxIdleConnsPerHost = %d: the per-host pool must be sized for concurrency", c.MaxIdleConnsPerHost)
	}
	if c.MaxConnsPerHost == 0 || c.MaxConnsPerHost > c.MaxIdleConnsPerHost {
		t.Errorf("MaxConnsPerHost = %d, MaxIdleConnsPerHost = %d: the pool must keep idle every connection it opens",
			c.MaxConnsPerHost, c.MaxIdleConnsPerHost)
	}
	for name, d := range map[string]time.Duration{
		"Timeout": c.Timeout, "DialTimeout": c.DialTimeout, "TLSHandshakeTimeout": c.TLSHandshakeTimeout,
		"ResponseHeaderTimeout": c.ResponseHeaderTimeout, "IdleConnTimeout": c.IdleConnTimeout, "DrainTimeout": c.DrainTimeout,
	} {
		if d <= 0 {
			t.Errorf("%s = %v, want a default timeout", name, d)
		}
	}
	if c.DisableHTTP2 || !c.ProxyFromEnvironment {
		t.Errorf("HTTP/2 disabled %v, proxy from environment %v; want HTTP/2 on and the environment's proxy", c.DisableHTTP2, c.ProxyFromEnvironment)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	edit := func(f func(*httpfx.Config)) httpfx.Config { c := httpfx.DefaultConfig(); f(&c); return c }
	tests := []struct {
		name string
		give httpfx.Config
		want string // "" means valid
	}{
		{"defaults", httpfx.DefaultConfig(), ""},
		{"zero value", httpfx.Config{}, "httpfx: config: MaxIdleConnsPerHost is 0, which net/http takes as 2"},
		{"minimal", httpfx.Config{MaxIdleConnsPerHost: 1}, ""},
		{"negative Timeout", edit(func(c *httpfx.Config) { c.Timeout = -1 }), "httpfx: config: Timeout is -1ns: want zero (no timeout) or a positive duration"},
		{"negative DialTimeout", edit(func(c *httpfx.Config) { c.DialTimeout = -time.Second }), "httpfx: config: DialTimeout is -1s"},
		{"negative KeepAlive", edit(func(c *httpfx.Config) { c.KeepAlive = -time.Second }), "httpfx: config: KeepAlive is -1s"},
		{"negative TLSHandshakeTimeout", edit(func(c *httpfx.Config) { c.TLSHandshakeTimeout = -time.Second }), "TLSHandshakeTimeout is -1s"},
		{"negative ResponseHeaderTimeout", edit(func(c *httpfx.Config) { c.ResponseHeaderTimeout = -time.Second }), "ResponseHeaderTimeout is -1s"},
		{"negative ExpectContinueTimeout", edit(func(c *httpfx.Config) { c.ExpectContinueTimeout = -time.Second }), "ExpectContinueTimeout is -1s"},
		{"negative IdleConnTimeout", edit(func(c *httpfx.Config) { c.IdleConnTimeout = -time.Second }), "IdleConnTimeout is -1s"},
		{"negative DrainTimeout", edit(func(c *httpfx.Config) { c.DrainTimeout = -time.Second }), "DrainTimeout is -1s"},
		{"negative MaxIdleConns", edit(func(c *httpfx.Config) { c.MaxIdleConns = -1 }), "httpfx: config: MaxIdleConns is -1: want zero (the default or no limit) or a positive number"},
		{"negative MaxIdleConnsPerHost", edit(func(c *httpfx.Config) { c.MaxIdleConnsPerHost = -1 }), "MaxIdleConnsPerHost is -1"},
		{"negative MaxConnsPerHost", edit(func(c *httpfx.Config) { c.MaxConnsPerHost = -1 }), "MaxConnsPerHost is -1"},
		{"negative MaxResponseHeaderBytes", edit(func(c *httpfx.Config) { c.MaxResponseHeaderBytes = -1 }), "MaxResponseHeaderBytes is -1"},
		{"per-host idle above total idle", edit(func(c *httpfx.Config) { c.MaxIdleConns = 100 }),
			"httpfx: config: MaxIdleConnsPerHost (512) exceeds MaxIdleConns (100): the per-host idle pool could never fill"},
		{"Timeout of the largest duration", edit(func(c *httpfx.Config) { c.Timeout = math.MaxInt64 }),
			"httpfx: config: Timeout is 2562047h47m16.854775807s: want at most 87600h0m0s (ten years); zero means no timeout"},
		{"DNSTTL past ten years", edit(func(c *httpfx.Config) { c.DNSTTL = 87601 * time.Hour }), "httpfx: config: DNSTTL is 87601h0m0s: want at most"},
		{"Timeout of ten years", edit(func(c *httpfx.Config) { c.Timeout = 87600 * time.Hour }), ""},
		{"user agent with newline", edit(func(c *httpfx.Config) { c.UserAgent = "a\r\nX-Evil: 1" }), "httpfx: config: UserAgent contains a control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	t.Run("reports every problem", func(t *testing.T) {
		err := httpfx.Config{Timeout: -1, MaxConnsPerHost: -1, MaxIdleConnsPerHost: 1}.Validate()
		if err == nil || !strings.Contains(err.Error(), "Timeout") || !strings.Contains(err.Error(), "MaxConnsPerHost") {
			t.Fatalf("Validate() = %v, want both fields named", err)
		}
	})
}

func TestLoadYAML(t *testing.T) {
	t.Parallel()
	def := httpfx.DefaultConfig()
	with := func(f func(*httpfx.Config)) httpfx.Config { c := httpfx.DefaultConfig(); f(&c); return c }
	tests := []struct {
		name    string
		give    string
		want    httpfx.Config
		wantErr string
	}{
		{"empty keeps defaults", "", def, ""},
		{"comment only", "# nothing\n", def, ""},
		{"partial overlays defaults", "timeout: 5s\nmax_conns_per_host: 64\nmax_idle_conns_per_host: 64\n",
			with(func(c *httpfx.Config) {
				c.Timeout = 5 * time.Second
				c.MaxConnsPerHost = 64
				c.MaxIdleConnsPerHost = 64
			}), ""},
		{"every kind of field", "disable_http2: true\nuser_agent: svc/1.0\ndrain_timeout: 1m30s\nmax_response_header_bytes: 4096\n",
			with(func(c *httpfx.Config) {
				c.DisableHTTP2 = true
				c.UserAgent = "svc/1.0"
				c.DrainTimeout = 90 * time.Second
				c.MaxResponseHeaderBytes = 4096
			}), ""},
		{"unknown key", "timeout: 5s\ntimout: 5s\n", httpfx.Config{}, `httpfx: config: line 2: unknown key "timout": known keys are timeout, dial_timeout`},
		{"bad duration", "timeout: 5\n", httpfx.Config{}, `httpfx: config: line 1: key "timeout": invalid duration "5": want a number with a unit`},
		{"bad integer", "max_idle_conns: lots\n", httpfx.Config{}, `key "max_idle_conns": invalid integer "lots"`},
		{"bad boolean", "disable_http2: maybe\n", httpfx.Config{}, `key "disable_http2": invalid boolean "maybe": want true or false`},
		{"nested value", "timeout:\n  seconds: 5\n", httpfx.Config{}, `key "timeout": want a single value`},
		{"null value", "timeout: ~\n", httpfx.Config{}, `key "timeout": want a single value`},
		{"duplicate key", "timeout: 1s\ntimeout: 2s\n", httpfx.Config{}, `key "timeout"`},
		{"not a mapping", "- timeout\n", httpfx.Config{}, "want a mapping of keys to values"},
		{"syntax error", "timeout: [\n", httpfx.Config{}, "httpfx: config: invalid YAML: yaml:"},
		{"invalid after load", "timeout: -5s\n", httpfx.Config{}, "httpfx: config: Timeout is -5s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := httpfx.LoadYAML([]byte(tt.give))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadYAML() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadYAML() error = %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadYAML() = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLoadYAMLFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "httpfx.yaml")
	if err := os.WriteFile(path, []byte("dial_timeout: 2s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := httpfx.LoadYAMLFile(path)
	if err != nil || got.DialTimeout != 2*time.Second || got.Timeout != httpfx.DefaultConfig().Timeout {
		t.Fatalf("LoadYAMLFile() = %+v, %v; want dial_timeout 2s over the defaults", got, err)
	}
	_, err = httpfx.LoadYAMLFile(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.HasPrefix(err.Error(), "httpfx: config: open ") || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("LoadYAMLFile(missing) = %v, want an httpfx error wrapping the not-exist error", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// A Config embedded in an application's own YAML keeps the defaults it does not mention.
func TestConfigEmbeddedInAppYAML(t *testing.T) {
	t.Parallel()
	var app struct {
		Name string        `yaml:"name"`
		HTTP httpfx.Config `yaml:"http"`
	}
	app.HTTP = httpfx.DefaultConfig()
	err := yaml.Unmarshal([]byte("name: svc\nhttp:\n  timeout: 3s\n"), &app)
	if err != nil {
		t.Fatal(err)
	}
	want := httpfx.DefaultConfig()
	want.Timeout = 3 * time.Second
	if !reflect.DeepEqual(app.HTTP, want) || app.Name != "svc" {
		t.Errorf("embedded config = %+v, want defaults with timeout 3s", app.HTTP)
	}
	err = yaml.Unmarshal([]byte("http:\n  bogus: 1\n"), &app)
	if err == nil || !strings.Contains(err.Error(), `unknown key "bogus"`) {
		t.Errorf("unknown embedded key: %v, want an error naming it", err)
	}
}

func TestLoadEnv(t *testing.T) {
	t.Parallel()
	with := func(f func(*httpfx.Config)) httpfx.Config { c := httpfx.DefaultConfig(); f(&c); return c }
	tests := []struct {
		name    string
		give    []string
		want    httpfx.Config
		wantErr string
	}{
		{"no variables keeps defaults", []string{"PATH=/bin", "HOME=/root"}, httpfx.DefaultConfig(), ""},
		{"overlay", []string{"HTTPFX_TIMEOUT=5s", "HTTPFX_MAX_IDLE_CONNS_PER_HOST=64", "HTTPFX_DISABLE_COMPRESSION=true", "OTHER=1"},
			with(func(c *httpfx.Config) {
				c.Timeout = 5 * time.Second
				c.MaxIdleConnsPerHost = 64
				c.DisableCompression = true
			}), ""},
		{"value with equals sign", []string{"HTTPFX_USER_AGENT=svc/1.0 (a=b)"}, with(func(c *httpfx.Config) { c.UserAgent = "svc/1.0 (a=b)" }), ""},
		{"unknown variable", []string{"HTTPFX_TIMEOUTS=5s"}, httpfx.Config{}, "httpfx: config: HTTPFX_TIMEOUTS: unknown variable: known are HTTPFX_TIMEOUT,"},
		{"bad duration", []string{"HTTPFX_DRAIN_TIMEOUT=soon"}, httpfx.Config{}, `httpfx: config: HTTPFX_DRAIN_TIMEOUT: invalid duration "soon"`},
		{"bad integer", []string{"HTTPFX_MAX_CONNS_PER_HOST=1.5"}, httpfx.Config{}, `HTTPFX_MAX_CONNS_PER_HOST: invalid integer "1.5"`},
		{"empty value", []string{"HTTPFX_TIMEOUT="}, httpfx.Config{}, `HTTPFX_TIMEOUT: invalid duration ""`},
		{"invalid after load", []string{"HTTPFX_MAX_IDLE_CONNS=8"}, httpfx.Config{}, "MaxIdleConnsPerHost (512) exceeds MaxIdleConns (8)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := httpfx.LoadEnv(tt.give)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadEnv() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadEnv() error = %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("LoadEnv() = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// Environment variables override a YAML file: the usual order of an application's sources.
func TestApplyEnvOverYAML(t *testing.T) {
	t.Parallel()
	c, err := httpfx.LoadYAML([]byte("timeout: 5s\ndial_timeout: 1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyEnv([]string{"HTTPFX_TIMEOUT=7s"}); err != nil {
		t.Fatal(err)
	}
	if c.Timeout != 7*time.Second || c.DialTimeout != time.Second {
		t.Errorf("timeout %v, dial timeout %v; want 7s from the environment and 1s from the file", c.Timeout, c.DialTimeout)
	}
}

// Each invalid configuration gets exactly this error.
func TestInvalidConfigExactErrors(t *testing.T) {
	t.Parallel()
	edit := func(f func(*httpfx.Config)) httpfx.Config { c := httpfx.DefaultConfig(); f(&c); return c }
	tests := []struct {
		name string
		give httpfx.Config
		want string
	}{
		{"negative duration", edit(func(c *httpfx.Config) { c.DrainTimeout = -5 * time.Second }),
			"httpfx: config: DrainTimeout is -5s: want zero (no timeout) or a positive duration"},
		{"negative size", edit(func(c *httpfx.Config) { c.MaxConnsPerHost = -1 }),
			"httpfx: config: MaxConnsPerHost is -1: want zero (the default or no limit) or a positive number"},
		{"zero where zero is meaningless", edit(func(c *httpfx.Config) { c.MaxIdleConnsPerHost = 0 }),
			"httpfx: config: MaxIdleConnsPerHost is 0, which net/http takes as 2 idle connections per host, so that almost every connection is thrown away under concurrency: want a positive number (DefaultConfig has 512)"},
		{"contradictory limits", edit(func(c *httpfx.Config) { c.MaxIdleConns, c.MaxIdleConnsPerHost = 8, 16 }),
			"httpfx: config: MaxIdleConnsPerHost (16) exceeds MaxIdleConns (8): the per-host idle pool could never fill; raise MaxIdleConns or lower MaxIdleConnsPerHost"},
		{"unreadable file", edit(func(c *httpfx.Config) { c.TLSCAFile = "/nonexistent/ca.pem" }),
			"httpfx: config: TLSCAFile: open /nonexistent/ca.pem: no such file or directory"},
		{"bad proxy URL", edit(func(c *httpfx.Config) { c.ProxyURL = "gopher://proxy:70" }),
			`httpfx: config: ProxyURL scheme "gopher": want http, https or socks5`},
		{"bad NoProxy", edit(func(c *httpfx.Config) { c.ProxyURL, c.NoProxy = "http://proxy:3128", "a b" }),
			`httpfx: config: NoProxy entry "a b": want a host, .domain or *.domain, IP address (each with an optional :port), CIDR range or *`},
		{"bad TLS version", edit(func(c *httpfx.Config) { c.TLSMinVersion = "1.0" }),
			`httpfx: config: TLSMinVersion is "1.0": want "1.2" or "1.3"`},
		{"header injection in the user agent", edit(func(c *httpfx.Config) { c.UserAgent = "x\nHost: evil" }),
			"httpfx: config: UserAgent contains a control character: want printable text"},
		{"bad upstream URL", edit(func(c *httpfx.Config) {
			c.Upstreams = map[string]httpfx.UpstreamConfig{"search": {BaseURL: "search.internal"}}
		}), `httpfx: config: upstream "search": BaseURL scheme "": want http or https`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Validate() = %v\nwant %s", err, tt.want)
			}
		})
	}
}

// Loading over a Config never changes a copy of it: the loaders copy the Upstreams map.
func TestLoadersDoNotChangeCopies(t *testing.T) {
	t.Parallel()
	orig := httpfx.DefaultConfig()
	orig.Upstreams = map[string]httpfx.UpstreamConfig{"pay": {BaseURL: "https://a", Headers: map[string]string{"X": "1"}}}
	cp := orig
	if err := cp.ApplyEnv([]string{"HTTPFX_UPSTREAMS__PAY__BASE_URL=https://b", "HTTPFX_UPSTREAMS__PAY__HEADERS__X=2"}); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte("upstreams:\n  new:\n    base_url: https://c\n"), &cp); err != nil {
		t.Fatal(err)
	}
	if got := orig.Upstreams["pay"]; got.BaseURL != "https://a" || got.Headers["X"] != "1" || len(orig.Upstreams) != 1 {
		t.Errorf("the original changed: %+v", orig.Upstreams)
	}
	if got := cp.Upstreams["pay"]; got.BaseURL != "https://b" || got.Headers["X"] != "2" || cp.Upstreams["new"].BaseURL != "https://c" {
		t.Errorf("the copy = %+v, want the overlays", cp.Upstreams)
	}
}

// The environment overrides a file's header whatever its spelling there: X_API_KEY names
// X-Api-Key, which a file may spell X-API-Key or x-api-key.
func TestEnvHeaderOverridesAnySpelling(t *testing.T) {
	t.Parallel()
	for _, give := range []string{"X-API-Key", "x-api-key", "X-Api-Key"} {
		t.Run(give, func(t *testing.T) {
			cfg, err := httpfx.LoadYAML([]byte("upstreams:\n  payments:\n    base_url: https://payments.internal/api/\n    headers:\n      " +
				give + ": from-file\n      X-Other: kept\n"))
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.ApplyEnv([]string{"HTTPFX_UPSTREAMS__PAYMENTS__HEADERS__X_API_KEY=from-env"}); err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate() = %v, want the environment's value to replace the file's", err)
			}
			want := map[string]string{"X-Api-Key": "from-env", "X-Other": "kept"}
			if got := cfg.Upstreams["payments"].Headers; !reflect.DeepEqual(got, want) {
				t.Errorf("headers %v, want %v", got, want)
			}
		})
	}
}
