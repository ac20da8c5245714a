package otelhttpfx_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/otelhttpfx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// startTraced starts an app of httpfx.Module, tracing (Tracing, or TracingWith's option),
// tel's providers and more, and returns it and its shared client; the test stops it.
func startTraced(t *testing.T, tel *telemetry, tracing fx.Option, more ...fx.Option) (*fxtest.App, *http.Client) {
	t.Helper()
	var c *http.Client
	app := fxtest.New(t, fx.NopLogger, tel.options(), httpfx.Module, tracing, fx.Options(more...), fx.Populate(&c))
	app.RequireStart()
	return app, c
}

// attr returns the value of the span's attribute key, and whether it has one.
func attr(sp sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range sp.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// A client span is named by the method, as the HTTP semantic conventions name one without a
// route template: "HTTP" for a method they do not know (case counts).
func TestSpanNames(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	tel := newTelemetry(t)
	app, c := startTraced(t, tel, otelhttpfx.Tracing)
	tests := []struct {
		give string // the request's method
		want string // the span's name
	}{
		{"GET", "GET"},
		{"", "GET"},
		{"POST", "POST"},
		{"PUT", "PUT"},
		{"DELETE", "DELETE"},
		{"PATCH", "PATCH"},
		{"OPTIONS", "OPTIONS"},
		{"QUERY", "QUERY"},
		{"PURGE", "HTTP"},
		{"get", "HTTP"},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			before := len(tel.spans.Ended())
			req, err := http.NewRequest(tt.give, u.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			spans := tel.spans.Ended()[before:]
			if len(spans) != 1 || spans[0].Name() != tt.want {
				var names []string
				for _, sp := range spans {
					names = append(names, sp.Name())
				}
				t.Errorf("spans %q, want one named %q", names, tt.want)
			}
		})
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// url.full shows "REDACTED" for the values of the query keys of presigned URLs, whatever
// their case or encoding, and keeps every other byte; the server gets the real URL.
func TestURLFullRedacted(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string // the raw queries the server got
	)
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r.URL.RawQuery)
	}))
	tel := newTelemetry(t)
	app, c := startTraced(t, tel, otelhttpfx.Tracing)
	tests := []struct {
		name, give, want string // the raw query sent, and url.full's
	}{
		{"S3 SigV4",
			"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=0123abcd",
			"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=20250101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=REDACTED"},
		{"S3 SigV4 with a session token",
			"X-Amz-Security-Token=IQoJb3Jp%2F%2F&X-Amz-Signature=0123abcd&color=blue",
			"X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED&color=blue"},
		{"S3 SigV2 with a session token, in lower case as S3 writes it",
			"AWSAccessKeyId=ASIAEXAMPLE&Signature=jUZh%2BQ%3D&x-amz-security-token=IQoJb3Jp&Expires=1700000000",
			"AWSAccessKeyId=REDACTED&Signature=REDACTED&x-amz-security-token=REDACTED&Expires=1700000000"},
		{"Azure SAS", "sv=2022-11-02&se=2030-01-01&sr=b&sp=r&sig=abc%3D", "sv=2022-11-02&se=2030-01-01&sr=b&sp=r&sig=REDACTED"},
		{"Google Cloud Storage", "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=deadbeef", "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=REDACTED"},
		{"a percent-encoded key", "X%2DAmz-Signature=0123abcd&a=b", "X%2DAmz-Signature=REDACTED&a=b"},
		{"a key twice", "sig=a&x=1&sig=b", "sig=REDACTED&x=1&sig=REDACTED"},
		{"a key in another case", "SIG=a&signature=b", "SIG=REDACTED&signature=REDACTED"},
		{"names that only contain a key", "signature_version=2&xsig=1&q=sig%3Dabc", "signature_version=2&xsig=1&q=sig%3Dabc"},
		{"nothing to hide", "sig=&sig&color=blue", "sig=&sig&color=blue"},
		{"no query", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(tel.spans.Ended())
			url, want := u.URL+"/path", u.URL+"/path"
			if tt.give != "" {
				url, want = url+"?"+tt.give, want+"?"+tt.want
			}
			if _, err := get(c, url); err != nil {
				t.Fatal(err)
			}
			spans := tel.spans.Ended()[before:]
			if len(spans) != 1 {
				t.Fatalf("%d spans, want 1", len(spans))
			}
			if got, _ := attr(spans[0], "url.full"); got.AsString() != want {
				t.Errorf("url.full = %q, want %q", got.AsString(), want)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := seen[len(seen)-1]; got != tt.give {
				t.Errorf("the server got the query %q, want %q as sent", got, tt.give)
			}
		})
	}
	t.Run("userinfo", func(t *testing.T) { // left out, as otelhttp leaves it out
		before := len(tel.spans.Ended())
		if _, err := get(c, strings.Replace(u.URL, "http://", "http://user:secret@", 1)+"/?sig=abc"); err != nil {
			t.Fatal(err)
		}
		if got, _ := attr(tel.spans.Ended()[before], "url.full"); got.AsString() != u.URL+"/?sig=REDACTED" {
			t.Errorf("url.full = %q, want %q", got.AsString(), u.URL+"/?sig=REDACTED")
		}
	})
	app.RequireStop()
	u.RequireNoConns(t)
}

// Each time httpfx sends a request again is a client span of its own; a resend has
// http.request.resend_count, the first send none.
func TestResendCount(t *testing.T) {
	u := testutil.NewServer(t, testutil.ResetFirst(t))
	tel := newTelemetry(t)
	var stats *httpfx.Stats
	app, c := startTraced(t, tel, otelhttpfx.Tracing, fx.Populate(&stats))
	if code, err := get(c, u.URL); err != nil || code != 200 {
		t.Fatalf("GET: %d, %v; want the resend's 200", code, err)
	}
	spans := tel.spans.Ended()
	if len(spans) != 2 || stats.Snapshot().Retries != 1 {
		t.Fatalf("%d spans, %d retries; want 2 and 1", len(spans), stats.Snapshot().Retries)
	}
	if v, ok := attr(spans[0], "http.request.resend_count"); ok || spans[0].Status().Code != codes.Error {
		t.Errorf("the first send: resend_count %v (%v), status %v; want none, and an error", v.Emit(), ok, spans[0].Status())
	}
	if v, ok := attr(spans[1], "http.request.resend_count"); !ok || v.AsInt64() != 1 || spans[1].Status().Code != codes.Unset {
		t.Errorf("the resend: resend_count %v (%v), status %v; want 1, and no error", v.Emit(), ok, spans[1].Status())
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// An empty HTTP/1.1 response whose body is never closed (otelhttp wraps it, so it is not
// http.NoBody) does not hold stop: stop returns at once, and cuts nothing.
func TestUnclosedEmptyResponseWithTracing(t *testing.T) {
	tests := []struct {
		give    string
		handler http.HandlerFunc
	}{
		{"204", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }},
		{"Content-Length: 0", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			u := testutil.NewServer(t, tt.handler)
			tel := newTelemetry(t)
			cfg := httpfx.DefaultConfig()
			cfg.DrainTimeout = 10 * time.Second
			var stats *httpfx.Stats
			app, c := startTraced(t, tel, otelhttpfx.Tracing, fx.Replace(cfg), fx.Populate(&stats))
			resp, err := c.Get(u.URL) // its body is never closed
			if err != nil {
				t.Fatal(err)
			}
			if resp.ProtoMajor != 1 || resp.Body == http.NoBody {
				t.Fatalf("HTTP/%d.%d, body %T: the test proves nothing", resp.ProtoMajor, resp.ProtoMinor, resp.Body)
			}
			start := time.Now()
			err = app.Stop(context.Background())
			if took := time.Since(start); err != nil || took > 2*time.Second {
				t.Errorf("stop: %v after %v; want it at once", err, took)
			}
			if s := stats.Snapshot(); s.Cut != 0 || s.InFlight != 0 {
				t.Errorf("after stop %+v, want nothing cut or in flight", s)
			}
			u.RequireNoConns(t)
		})
	}
}

// A propagator in the graph injects the trace context, without the global one set.
func TestPropagatorFromGraph(t *testing.T) {
	if fields := otel.GetTextMapPropagator().Fields(); len(fields) != 0 {
		t.Fatalf("the global propagator injects %v: the test proves nothing", fields)
	}
	headers := make(chan string, 1)
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		headers <- r.Header.Get("traceparent")
	}))
	tel := newTelemetry(t)
	app, c := startTraced(t, tel, otelhttpfx.Tracing,
		fx.Supply(fx.Annotate(propagation.TraceContext{}, fx.As(new(propagation.TextMapPropagator)))))
	if _, err := get(c, u.URL); err != nil {
		t.Fatal(err)
	}
	got := <-headers
	if spans := tel.spans.Ended(); len(spans) != 1 || !strings.Contains(got, spans[0].SpanContext().TraceID().String()) {
		t.Errorf("traceparent %q, want the span's trace", got)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}

// Tracing traces when given beside httpfx.Module or above it; inside an fx.Module that does
// not hold httpfx.Module, where fx would not apply its decoration, it fails fx.New saying
// where it belongs.
func TestTracingPlacement(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	tests := []struct {
		give    string
		options fx.Option
		wantErr string
	}{
		{"top level", fx.Options(httpfx.Module, otelhttpfx.Tracing), ""},
		{"top level, first", fx.Options(otelhttpfx.Tracing, httpfx.Module), ""},
		{"beside httpfx.Module in a module", fx.Module("mine", httpfx.Module, otelhttpfx.Tracing), ""},
		{"above httpfx.Module", fx.Module("outer", otelhttpfx.Tracing, fx.Module("inner", httpfx.Module)), ""},
		{"in a module without httpfx.Module", fx.Options(httpfx.Module, fx.Module("mine", otelhttpfx.Tracing)),
			"otelhttpfx: Tracing wrapped no round tripper of the shared client: give it beside httpfx.Module or above it"},
		{"in a module, with a consumer of the round tripper after it",
			fx.Options(httpfx.Module, fx.Module("mine", otelhttpfx.Tracing, fx.Invoke(func(http.RoundTripper) {}))),
			"otelhttpfx: Tracing wrapped no round tripper"},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			tel := newTelemetry(t)
			var c *http.Client
			app := fx.New(fx.NopLogger, tel.options(), tt.options, fx.Populate(&c))
			if tt.wantErr != "" {
				if err := app.Err(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("fx.New: %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err := app.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			if _, err := get(c, u.URL); err != nil {
				t.Fatal(err)
			}
			if err := app.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := len(tel.spans.Ended()); n != 1 {
				t.Errorf("%d spans, want 1", n)
			}
		})
	}
	u.RequireNoConns(t)
}
