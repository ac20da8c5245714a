package httpfx_test

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
)

// The fuzz targets run their seed corpora (testdata/fuzz and f.Add) as ordinary tests; fuzz
// each for 30 s with:
//
//	go test -run '^$' -fuzz '^FuzzLoadYAML$' -fuzztime 30s .
//	go test -run '^$' -fuzz '^FuzzLoadEnv$' -fuzztime 30s .
//	go test -run '^$' -fuzz '^FuzzValidate$' -fuzztime 30s .

// configNames are the words an error may use to name what it rejects: Go field names, YAML
// keys and environment variables.
func configNames() []string {
	var names []string
	for _, typ := range []reflect.Type{reflect.TypeFor[httpfx.Config](), reflect.TypeFor[httpfx.UpstreamConfig]()} {
		for i := range typ.NumField() {
			f := typ.Field(i)
			names = append(names, f.Name, f.Tag.Get("yaml"))
		}
	}
	return names
}

// checkRejection fails unless every line of err starts with "httpfx: " and names what it
// rejects: a field, a key or variable, or (for YAML syntax) the line.
func checkRejection(t *testing.T, err error, extra ...string) {
	t.Helper()
	names := append(configNames(), extra...)
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.HasPrefix(line, "httpfx: ") {
			t.Fatalf("error line without the httpfx prefix: %q", line)
		}
		named := strings.Contains(line, "line ") || strings.Contains(line, "upstream ") || strings.Contains(line, "invalid YAML")
		for _, n := range names {
			named = named || (n != "" && strings.Contains(line, n))
		}
		if !named {
			t.Fatalf("error names no field, key or line: %q", line)
		}
	}
}

func FuzzLoadYAML(f *testing.F) {
	for _, seed := range []string{
		"",
		"timeout: 5s\n",
		"timeout: 5\n",
		"max_idle_conns: -1\n",
		"upstreams:\n  payments:\n    base_url: https://pay.internal/\n    headers:\n      X-Api: \"2\"\n",
		"upstreams:\n  payments: [1, 2]\n",
		"unknown: 1\n",
		"timeout: &a 5s\ndial_timeout: *a\n",
		"{timeout: 1s, drain_timeout: 1m}",
		"- a\n- b\n",
		"timeout: [\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := httpfx.LoadYAML(b)
		if err != nil {
			checkRejection(t, err)
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("LoadYAML returned a config that Validate rejects: %v", err)
		}
	})
}

func FuzzLoadEnv(f *testing.F) {
	for _, seed := range [][2]string{
		{"TIMEOUT", "5s"},
		{"TIMEOUT", "soon"},
		{"MAX_CONNS_PER_HOST", "-3"},
		{"DISABLE_HTTP2", "yes"},
		{"UPSTREAMS__PAYMENTS__BASE_URL", "https://pay.internal"},
		{"UPSTREAMS__PAYMENTS__HEADERS__X_API_VERSION", "2"},
		{"UPSTREAMS__PAYMENTS", "x"},
		{"UPSTREAMS____", ""},
		{"TIMEOUT__X", "1s"},
		{"NOPE", "1"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		if strings.ContainsAny(name, "=\x00") {
			t.Skip("not a variable name")
		}
		cfg, err := httpfx.LoadEnv([]string{httpfx.EnvPrefix + name + "=" + value})
		if err != nil {
			checkRejection(t, err, httpfx.EnvPrefix, strconv.Quote(httpfx.EnvPrefix+name))
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("LoadEnv returned a config that Validate rejects: %v", err)
		}
	})
}

func FuzzValidate(f *testing.F) {
	f.Add(int64(30*time.Second), int64(5*time.Second), 1024, 512, 512, int64(1<<20), "", "", "", "1.2", "https://pay.internal/", "Authorization", "Bearer x")
	f.Add(int64(-1), int64(0), -1, 0, 0, int64(-1), "ua\r\n", "ftp://p", "x/y", "1.1", "::bad", "Bad Header", "v\n")
	f.Add(int64(0), int64(0), 10, 20, 0, int64(0), "", "http://u:p@proxy:3128", "*", "1.3", "", "", "")
	f.Fuzz(func(t *testing.T, timeout, dial int64, maxIdle, maxIdlePerHost, maxConnsPerHost int, maxHeader int64,
		ua, proxyURL, noProxy, minVersion, baseURL, headerName, headerValue string) {
		cfg := httpfx.Config{
			Timeout: time.Duration(timeout), DialTimeout: time.Duration(dial),
			MaxIdleConns: maxIdle, MaxIdleConnsPerHost: maxIdlePerHost, MaxConnsPerHost: maxConnsPerHost,
			MaxResponseHeaderBytes: maxHeader, UserAgent: ua, ProxyURL: proxyURL, NoProxy: noProxy, TLSMinVersion: minVersion,
			Upstreams: map[string]httpfx.UpstreamConfig{"payments": {BaseURL: baseURL, Headers: map[string]string{headerName: headerValue}}},
		}
		if err := cfg.Validate(); err != nil {
			checkRejection(t, err)
		}
	})
}
