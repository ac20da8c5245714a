package otelhttpfx

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/httpfx/httpfx"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
)

// Tracing is TracingWith(): the shared client's requests traced with otelhttp's defaults
// but for the span name, and with the graph's providers and propagator. It was a bare
// fx.Decorate before TracingWith existed; it is now an fx.Option of several parts, used the
// same way.
var Tracing = TracingWith()

// TracingWith wraps the shared client's round tripper with otelhttp's transport (an
// fx.Decorate of http.RoundTripper), so that each request of the shared and the upstream
// clients gets a client span and carries the trace context to the upstream. Each time httpfx
// sends a request again (see httpfx.Config.Retry) is a span of its own, with
// http.request.resend_count, the number of the resend.
//
// It takes a trace.TracerProvider from the graph if there is one, else
// otel.GetTracerProvider(), and injects with the graph's propagation.TextMapPropagator if
// there is one, else otel.GetTextMapPropagator(). A span is named by the method as the HTTP
// semantic conventions name a client span without a route: "GET", or "HTTP" for a method
// they do not know. url.full shows the values of the query keys of presigned URLs
// (AWSAccessKeyId, Signature, sig, X-Goog-Signature, X-Amz-Signature, X-Amz-Credential and
// X-Amz-Security-Token, matched whatever their case) as "REDACTED", as the conventions ask;
// the request keeps its URL. otelhttp's own metrics are off: Module records them.
//
// opts go to otelhttp.NewTransport after these defaults, so that one of the same kind wins:
// otelhttp.WithSpanNameFormatter, WithTracerProvider, WithPropagators, WithMeterProvider,
// WithFilter, WithClientTrace and the others.
//
// Give it beside httpfx.Module or above it (at the app's top level), not inside an fx.Module
// of yours that does not hold httpfx.Module: fx applies a decoration only within the module
// that gives it and below, so there it would trace nothing. Given there, it fails fx.New with
// an error that says where it belongs. It makes fx.New build *http.Client to check this. fx
// allows one decoration of a type per module: give it once, and if you decorate
// http.RoundTripper yourself, call otelhttp.NewTransport in yours instead. Requests refused
// with httpfx.ErrClosed after stop have no span: httpfx refuses them before the wrapper.
func TracingWith(opts ...otelhttp.Option) fx.Option {
	opts = slices.Clone(opts)
	return fx.Options(
		fx.Provide(fx.Private, func() *tracingState { return new(tracingState) }),
		fx.Decorate(func(p tracingParams) http.RoundTripper {
			p.State.decorated = true
			return wrapRoundTripper(p, opts)
		}),
		fx.Invoke(checkTracing),
	)
}

// tracingState records, for the check of TracingWith, whether its decorator ran in its
// scope. One per app and scope, private to it; fx.New uses it from one goroutine.
type tracingState struct{ decorated bool }

// tracingParams are the inputs of TracingWith's decorator.
type tracingParams struct {
	fx.In

	Next           http.RoundTripper
	TracerProvider trace.TracerProvider          `optional:"true"`
	Propagator     propagation.TextMapPropagator `optional:"true"`
	State          *tracingState
}

func wrapRoundTripper(p tracingParams, opts []otelhttp.Option) http.RoundTripper {
	tp := p.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	all := []otelhttp.Option{
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithMeterProvider(noop.NewMeterProvider()),
		otelhttp.WithSpanNameFormatter(spanName),
	}
	if p.Propagator != nil {
		all = append(all, otelhttp.WithPropagators(p.Propagator))
	}
	return &tracedTransport{otel: otelhttp.NewTransport(&spanAttributes{next: p.Next}, append(all, opts...)...)}
}

// checkTracing fails fx.New if TracingWith's decorator did not run where it was given, by
// the time the shared client is built: then it wraps nothing the client sends through.
func checkTracing(_ *http.Client, st *tracingState) error {
	if st.decorated {
		return nil
	}
	return errors.New("otelhttpfx: Tracing wrapped no round tripper of the shared client: give it beside httpfx.Module or above it " +
		"(at the app's top level), not inside an fx.Module that does not hold httpfx.Module, since fx applies a decoration " +
		"only within the module that gives it and below; or the app replaced *http.Client with one that does not send " +
		"through the graph's http.RoundTripper")
}

// tracedTransport is what TracingWith decorates http.RoundTripper with: otelhttp's
// transport, over spanAttributes. It notes in the request's context the caller's span, if
// one is recording, so that spanAttributes can tell otelhttp's span from the caller's:
// otelhttp starts none for a request that its filter (otelhttp.WithFilter) skips. It holds
// no state and is safe for concurrent use.
type tracedTransport struct {
	otel *otelhttp.Transport
}

var _ http.RoundTripper = (*tracedTransport)(nil)

// callerSpanKey is the context key of the caller's span's ID, a trace.SpanID.
type callerSpanKey struct{}

// RoundTrip implements http.RoundTripper.
func (t *tracedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if caller := trace.SpanFromContext(req.Context()); caller.IsRecording() {
		req = req.WithContext(context.WithValue(req.Context(), callerSpanKey{}, caller.SpanContext().SpanID()))
	}
	return t.otel.RoundTrip(req)
}

// spanAttributes is the round tripper under otelhttp's: it sees each request as sent, with
// its client span in its context, and sets what otelhttp does not: http.request.resend_count
// and a redacted url.full. It holds no state and is safe for concurrent use.
type spanAttributes struct {
	next http.RoundTripper
}

var _ http.RoundTripper = (*spanAttributes)(nil)

// RoundTrip implements http.RoundTripper: it sends req through next unchanged.
func (t *spanAttributes) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	span := trace.SpanFromContext(ctx)
	if caller, ok := ctx.Value(callerSpanKey{}).(trace.SpanID); ok && caller == span.SpanContext().SpanID() {
		return t.next.RoundTrip(req) // otelhttp started no span: this one is the caller's
	}
	if span.IsRecording() {
		if n := httpfx.Attempt(ctx); n > 1 {
			span.SetAttributes(attribute.Int("http.request.resend_count", n-1))
		}
		if req.URL != nil {
			if q, ok := redactQuery(req.URL.RawQuery); ok {
				u := *req.URL
				u.User = nil // as otelhttp's url.full
				u.RawQuery = q
				span.SetAttributes(attribute.String("url.full", u.String()))
			}
		}
	}
	return t.next.RoundTrip(req)
}

// spanName names a client span as the HTTP semantic conventions do without a route template:
// by the method, or "HTTP" for a method they do not know (whose http.request.method is
// _OTHER).
func spanName(_ string, r *http.Request) string {
	if r.Method == "" {
		return http.MethodGet
	}
	if m := method(r.Method); m != "_OTHER" {
		return m
	}
	return "HTTP"
}

// redactedQueryKeys are the query keys whose values url.full shows as "REDACTED": those the
// HTTP semantic conventions (v1.42) list, the credentials of presigned URLs of S3 (SigV2 and
// SigV4), CloudFront, Azure SAS and Google Cloud Storage.
//
// A key matches whatever its case (and percent-encoding), although the conventions ask for a
// case-sensitive match: S3 itself puts a session token in SigV2 presigned URLs as
// x-amz-security-token, in lower case, and a missed match puts a live credential in every
// trace backend the span reaches, while a needless one only hides a value from a trace.
var redactedQueryKeys = []string{
	"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature",
	"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
}

// redactQuery returns q, a raw query, with each non-empty value of a redactedQueryKeys key
// replaced by REDACTED, and whether it replaced any. Everything else keeps its bytes.
func redactQuery(q string) (string, bool) {
	var b []byte // nil until a value is replaced
	for i := 0; i <= len(q); {
		end := len(q)
		if j := strings.IndexByte(q[i:], '&'); j >= 0 {
			end = i + j
		}
		pair := q[i:end]
		if key, value, ok := strings.Cut(pair, "="); ok && value != "" && redacted(key) {
			if b == nil {
				b = append(make([]byte, 0, len(q)+16), q[:i]...)
			}
			b = append(append(b, key...), "=REDACTED"...)
		} else if b != nil {
			b = append(b, pair...)
		}
		if b != nil && end < len(q) {
			b = append(b, '&')
		}
		i = end + 1
	}
	if b == nil {
		return q, false
	}
	return string(b), true
}

// redacted reports whether the value of key, a raw query key, is a credential.
func redacted(key string) bool {
	if strings.ContainsAny(key, "%+") {
		if k, err := url.QueryUnescape(key); err == nil {
			key = k
		}
	}
	for _, k := range redactedQueryKeys {
		if strings.EqualFold(key, k) {
			return true
		}
	}
	return false
}
