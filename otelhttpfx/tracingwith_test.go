package otelhttpfx_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/otelhttpfx"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TracingWith's otelhttp options reach otelhttp's transport, after Tracing's defaults, so
// that one of the same kind wins.
func TestTracingWithOptions(t *testing.T) {
	u := testutil.NewServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	other := tracetest.NewSpanRecorder()
	otherTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(other))
	defer otherTP.Shutdown(context.Background())
	tests := []struct {
		give  string
		opt   otelhttp.Option
		check func(t *testing.T, graph, other []sdktrace.ReadOnlySpan)
	}{
		{"span name formatter", otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "mine " + r.Method }),
			func(t *testing.T, spans, _ []sdktrace.ReadOnlySpan) {
				if len(spans) != 1 || spans[0].Name() != "mine GET" {
					t.Errorf("%d spans, want one named by the formatter given", len(spans))
				}
			}},
		{"span options", otelhttp.WithSpanOptions(trace.WithAttributes(attribute.String("team", "search"))),
			func(t *testing.T, spans, _ []sdktrace.ReadOnlySpan) {
				if len(spans) != 1 || spans[0].SpanKind() != trace.SpanKindClient {
					t.Fatalf("%d spans, want one client span", len(spans))
				}
				if v, _ := attr(spans[0], "team"); v.AsString() != "search" {
					t.Errorf("span attributes %v, want team=search", spans[0].Attributes())
				}
			}},
		{"tracer provider", otelhttp.WithTracerProvider(otherTP),
			func(t *testing.T, spans, others []sdktrace.ReadOnlySpan) {
				if len(spans) != 0 || len(others) != 1 {
					t.Errorf("%d spans with the graph's provider, %d with the option's; want 0 and 1", len(spans), len(others))
				}
			}},
		{"filter", otelhttp.WithFilter(func(*http.Request) bool { return false }),
			func(t *testing.T, spans, _ []sdktrace.ReadOnlySpan) {
				if len(spans) != 0 {
					t.Errorf("%d spans, want none: the filter drops them", len(spans))
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			tel := newTelemetry(t)
			before := len(other.Ended())
			app, c := startTraced(t, tel, otelhttpfx.TracingWith(tt.opt))
			if _, err := get(c, u.URL); err != nil {
				t.Fatal(err)
			}
			app.RequireStop()
			tt.check(t, tel.spans.Ended(), other.Ended()[before:])
		})
	}
	u.RequireNoConns(t)
}

// A request otelhttp's filter skips has no span of its own: the caller's span, in its
// context, gets none of the attributes of a client span.
func TestFilteredRequestLeavesCallerSpan(t *testing.T) {
	u := testutil.NewServer(t, testutil.ResetFirst(t))
	tel := newTelemetry(t)
	app, c := startTraced(t, tel, otelhttpfx.TracingWith(otelhttp.WithFilter(func(*http.Request) bool { return false })))
	ctx, parent := tel.tp.Tracer("test").Start(context.Background(), "caller")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL+"/?sig=abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req) // sent twice: the first connection is reset
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	parent.End()
	spans := tel.spans.Ended()
	if len(spans) != 1 || spans[0].Name() != "caller" {
		t.Fatalf("%d spans, want only the caller's", len(spans))
	}
	if got := spans[0].Attributes(); len(got) != 0 {
		t.Errorf("the caller's span has %v, want no attributes", got)
	}
	app.RequireStop()
	u.RequireNoConns(t)
}
