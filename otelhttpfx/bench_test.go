package otelhttpfx_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/internal/testutil"
	"github.com/httpfx/httpfx/otelhttpfx"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
)

// BenchmarkModule measures one GET of a short body over HTTP/1.1 on loopback through the
// shared client: without the module, with its metrics (an SDK meter provider) and with
// metrics and tracing (an SDK tracer provider that records every span). The difference is
// the cost per request of each.
//
//	go test -run '^$' -bench . -benchmem -count 6
func BenchmarkModule(b *testing.B) {
	for _, v := range []struct {
		name string
		opts func(b *testing.B) fx.Option
	}{
		{"none", func(*testing.B) fx.Option { return fx.Options() }},
		{"metrics", func(b *testing.B) fx.Option {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			b.Cleanup(func() { mp.Shutdown(context.Background()) })
			return fx.Options(otelhttpfx.Module, fx.Supply(fx.Annotate(mp, fx.As(new(metric.MeterProvider)))))
		}},
		{"metrics+tracing", func(b *testing.B) fx.Option {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
			b.Cleanup(func() {
				mp.Shutdown(context.Background())
				tp.Shutdown(context.Background())
			})
			return fx.Options(otelhttpfx.Module, otelhttpfx.Tracing,
				fx.Supply(fx.Annotate(mp, fx.As(new(metric.MeterProvider))), fx.Annotate(tp, fx.As(new(trace.TracerProvider)))))
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			u := testutil.NewServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
			var c *http.Client
			app := fx.New(fx.NopLogger, httpfx.Module, v.opts(b), fx.Populate(&c))
			if err := app.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer app.Stop(context.Background())
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := get(c, u.URL); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
