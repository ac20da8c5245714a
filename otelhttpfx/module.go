// Package otelhttpfx records the OpenTelemetry HTTP client metrics of httpfx's shared client,
// and traces its requests with otelhttp.
//
// Add Module beside httpfx.Module for the metrics of the semantic conventions
// (http.client.request.duration, http.client.active_requests, http.client.open_connections,
// http.client.connection.duration) and httpfx's own (httpfx.client.*); add Tracing, at the
// app's top level, for a client span per request:
//
//	fx.New(httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing, ...)
//
// Both take their provider from the graph if it has one (metric.MeterProvider,
// trace.TracerProvider), else OpenTelemetry's global one. Neither changes what httpfx owns
// or how it stops: requests through the traced round tripper are gated and drained, and stop
// closes the transport httpfx built, which otelhttp's wrapper cannot hide.
package otelhttpfx

import (
	"net/http"

	"github.com/httpfx/httpfx"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
)

// Module records the metrics of the client, the upstream clients and the transport that
// httpfx.Module builds. It adds an *Observer to the value group "httpfx.observers" and
// registers its counters of httpfx.Stats. It takes a metric.MeterProvider from the graph if
// there is one, else otel.GetMeterProvider(), and fails fx.New if the provider refuses an
// instrument.
//
// The callbacks of the counters read from Stats stay registered with the provider after
// stop, so that its last export, at its own shutdown, still sees what stop did (requests cut
// and rejected): an app built many times against one long-lived provider reports each.
var Module = fx.Module("otelhttpfx",
	fx.Provide(fx.Private, newModuleObserver),
	fx.Provide(
		fx.Annotate(func(o *Observer) httpfx.Observer { return o }, fx.ResultTags(`group:"httpfx.observers"`)),
	),
	fx.Invoke(func(o *Observer, s *httpfx.Stats) error {
		_, err := o.ObserveStats(s)
		return err
	}),
)

// Tracing wraps the shared client's round tripper with otelhttp's transport (an fx.Decorate
// of http.RoundTripper), so that each request of the shared and the upstream clients gets a
// client span and carries the trace context to the upstream. It takes a
// trace.TracerProvider from the graph if there is one, else otel.GetTracerProvider(), and
// injects with otel.GetTextMapPropagator(). otelhttp's own metrics are off: Module records
// them.
//
// Give it at the app's top level, not inside an fx.Module of yours: fx applies a decoration
// only within the module that gives it and below. fx allows one decoration of a type per
// module: if you decorate http.RoundTripper yourself, call otelhttp.NewTransport in yours
// instead. Requests refused with httpfx.ErrClosed after stop have no span: httpfx refuses
// them before the wrapper.
var Tracing = fx.Decorate(wrapRoundTripper)

// tracingParams are the inputs of Tracing.
type tracingParams struct {
	fx.In

	Next           http.RoundTripper
	TracerProvider trace.TracerProvider `optional:"true"`
}

func wrapRoundTripper(p tracingParams) http.RoundTripper {
	tp := p.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return otelhttp.NewTransport(p.Next,
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithMeterProvider(noop.NewMeterProvider()),
	)
}

// observerParams are the inputs of the Module's Observer.
type observerParams struct {
	fx.In

	MeterProvider metric.MeterProvider `optional:"true"`
}

func newModuleObserver(p observerParams) (*Observer, error) {
	mp := p.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return NewObserver(mp)
}
