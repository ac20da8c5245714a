package otelhttpfx_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync/atomic"

	"github.com/httpfx/httpfx"
	"github.com/httpfx/httpfx/otelhttpfx"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
)

// Record the client's metrics and trace its requests with the app's providers and
// propagator.
func Example() {
	var traced atomic.Int64 // requests that carried the trace context
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("traceparent") != "" {
			traced.Add(1)
		}
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))

	var client *http.Client
	app := fx.New(fx.NopLogger,
		httpfx.Module,
		otelhttpfx.Module,  // the metrics
		otelhttpfx.Tracing, // a client span per request; beside httpfx.Module, or at the app's top level
		fx.Supply(
			fx.Annotate(mp, fx.As(new(metric.MeterProvider))),                                  // else otel.GetMeterProvider()
			fx.Annotate(tp, fx.As(new(trace.TracerProvider))),                                  // else otel.GetTracerProvider()
			fx.Annotate(propagation.TraceContext{}, fx.As(new(propagation.TextMapPropagator))), // else otel.GetTextMapPropagator()
		),
		fx.Populate(&client),
	)
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	for range 3 {
		resp, err := client.Get(upstream.URL)
		if err != nil {
			panic(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	// Collect before stop: the module unregisters its counters of Stats at stop.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		panic(err)
	}
	if err := app.Stop(context.Background()); err != nil {
		panic(err)
	}
	var lines []string
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				lines = append(lines, fmt.Sprintf("%s (%s): %d recorded", m.Name, m.Unit, dp.Count))
			}
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				name := m.Name
				if state, ok := dp.Attributes.Value("http.connection.state"); ok {
					name += "{" + state.AsString() + "}"
				}
				if resumed, ok := dp.Attributes.Value("tls.resumed"); ok {
					name += "{resumed=" + resumed.Emit() + "}"
				}
				lines = append(lines, fmt.Sprintf("%s (%s): %d", name, m.Unit, dp.Value))
			}
		}
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Printf("%d spans named %q, %d traceparent headers sent\n", len(spans.Ended()), spans.Ended()[0].Name(), traced.Load())
	// Output:
	// http.client.active_requests ({request}): 0
	// http.client.open_connections{active} ({connection}): 0
	// http.client.open_connections{idle} ({connection}): 1
	// http.client.request.duration (s): 3 recorded
	// httpfx.client.connections.opened ({connection}): 1
	// httpfx.client.requests.cut ({request}): 0
	// httpfx.client.requests.rejected ({request}): 0
	// httpfx.client.requests.replayed ({request}): 0
	// httpfx.client.requests.retried ({retry}): 0
	// httpfx.client.requests.retry_budget_refused ({retry}): 0
	// httpfx.client.requests.waiting ({request}): 0
	// httpfx.client.tls.handshakes{resumed=false} ({handshake}): 0
	// httpfx.client.tls.handshakes{resumed=true} ({handshake}): 0
	// 3 spans named "GET", 3 traceparent headers sent
}
