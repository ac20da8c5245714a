package httpfx_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// forwardProxy is a loopback HTTP forward proxy that counts the requests it relays.
type forwardProxy struct {
	*testutil.Server
	relayed   atomic.Int64
	lastAuth  atomic.Value // the last Proxy-Authorization header
	transport *http.Transport
}

func newForwardProxy(t testing.TB) *forwardProxy {
	p := &forwardProxy{transport: &http.Transport{}}
	p.Server = testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		p.relayed.Add(1)
		p.lastAuth.Store(r.Header.Get("Proxy-Authorization"))
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, r.URL.String(), r.Body)
		resp, err := p.transport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(p.transport.CloseIdleConnections)
	return p
}

func TestExplicitProxy(t *testing.T) {
	u := testutil.NewServer(t, okHandler())
	proxy := newForwardProxy(t)
	proxyURL := strings.Replace(proxy.URL, "http://", "http://svc:pr0xy-pass@", 1)
	tests := []struct {
		name        string
		noProxy     string
		wantRelayed int64
	}{
		{"through the proxy", "", 1},
		{"bypassed by NoProxy", "example.com, 127.0.0.1", 0},
		{"NoProxy for another port", "127.0.0.1:1", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := proxy.relayed.Load()
			core, logs := observer.New(zap.DebugLevel)
			var client *http.Client
			app := fxtest.New(t, fx.NopLogger, httpfx.Module, fx.Supply(zap.New(core)), fx.Populate(&client),
				withConfig(func(c *httpfx.Config) { c.ProxyURL, c.NoProxy = proxyURL, tt.noProxy }))
			app.RequireStart()
			if body := mustGet(t, client, u.URL); body != "ok" {
				t.Errorf("body %q, want ok", body)
			}
			app.RequireStop()
			if got := proxy.relayed.Load() - before; got != tt.wantRelayed {
				t.Errorf("proxy relayed %d requests, want %d", got, tt.wantRelayed)
			}
			if tt.wantRelayed > 0 && proxy.lastAuth.Load() != "Basic c3ZjOnByMHh5LXBhc3M=" {
				t.Errorf("proxy saw Proxy-Authorization %q, want the URL's credentials", proxy.lastAuth.Load())
			}
			for _, e := range logs.All() {
				line, _ := json.Marshal(e.ContextMap())
				if strings.Contains(string(line), "pr0xy-pass") || strings.Contains(string(line), "svc:") {
					t.Errorf("log leaks the proxy's credentials: %s %s", e.Message, line)
				}
			}
		})
	}
	proxy.transport.CloseIdleConnections()
	u.RequireNoConns(t)
}

func TestBadProxyConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give    httpfx.Config
		want    string
		secrets string
	}{
		{httpfx.Config{ProxyURL: "ftp://proxy:21"}, `httpfx: config: ProxyURL scheme "ftp": want http, https or socks5`, ""},
		{httpfx.Config{ProxyURL: "http://"}, "httpfx: config: ProxyURL has no host", ""},
		{httpfx.Config{ProxyURL: "http://user:s3cret@proxy:80/%zz"}, "httpfx: config: ProxyURL is not a valid URL", "s3cret"},
		{httpfx.Config{ProxyURL: "http://proxy:3128", NoProxy: "a.com, x/y"}, `httpfx: config: NoProxy entry "x/y"`, ""},
		{httpfx.Config{ProxyURL: "http://:3128"}, "httpfx: config: ProxyURL has no host: want scheme://host:port", ""},
		{httpfx.Config{ProxyURL: "http://user:s3cret@proxy:99999"}, `httpfx: config: ProxyURL has port "99999": want 1 to 65535`, "s3cret"},
		{httpfx.Config{ProxyURL: "http://proxy:"}, "httpfx: config: ProxyURL has an empty port", ""},
		{httpfx.Config{ProxyURL: "https://proxy:3129", TLSServerName: "billing.internal"},
			`httpfx: config: TLSServerName cannot be used with an https ProxyURL: the proxy's TLS handshake would expect "billing.internal" too`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			err := tt.give.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
			if tt.secrets != "" && strings.Contains(err.Error(), tt.secrets) {
				t.Errorf("error leaks %q: %v", tt.secrets, err)
			}
		})
	}
}
