// Package otelhttpfx records the OpenTelemetry HTTP client metrics of httpfx's shared client,
// and traces its requests with otelhttp.
//
// Add Module beside httpfx.Module for the metrics of the semantic conventions
// (http.client.request.duration, http.client.active_requests, http.client.open_connections,
// http.client.connection.duration) and httpfx's own (httpfx.client.*); add Tracing, or
// TracingWith to pass otelhttp options, beside httpfx.Module or above it (at the app's top
// level), for a client span per request:
//
//	fx.New(httpfx.Module, otelhttpfx.Module, otelhttpfx.Tracing, ...)
//
// Both take their provider from the graph if it has one (metric.MeterProvider,
// trace.TracerProvider), else OpenTelemetry's global one; Tracing also takes a
// propagation.TextMapPropagator from the graph, else the global one. Neither changes what
// httpfx owns or how it stops: requests through the traced round tripper are gated and
// drained, and stop closes the transport httpfx built, which otelhttp's wrapper cannot hide.
// When stop returns, the Module has undone its registration with the meter provider.
package otelhttpfx

import (
	"context"
	"errors"
	"fmt"

	"github.com/httpfx/httpfx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/fx"
)

// Module records the metrics of the client, the upstream clients and the transport that
// httpfx.Module builds. It adds an *Observer to the value group "httpfx.observers" and
// records its counters of httpfx.Stats (see Observer.ObserveStats). It takes a
// metric.MeterProvider from the graph if there is one, else otel.GetMeterProvider(), and
// fails fx.New if the provider refuses an instrument.
//
// It registers the callback of the counters read from Stats at start, before httpfx starts,
// and unregisters it at stop, after httpfx's own stop, so that nothing of an app is left
// registered with a provider that outlives it: an app that fails at fx.New has registered
// nothing, one that fails at start or has stopped has unregistered it by the time Start or
// Stop returns. Just before it unregisters, it flushes the provider if the provider has a
// ForceFlush method (the SDK's has), so that its exporters get what stop did (requests cut);
// a flush that fails makes stop return the error, after the callback is unregistered.
var Module = fx.Module("otelhttpfx",
	fx.Provide(fx.Private, newModuleStats),
	fx.Provide(
		fx.Annotate(func(m *moduleStats) httpfx.Observer { return m.obs }, fx.ResultTags(`group:"httpfx.observers"`)),
	),
	fx.Invoke(func(m *moduleStats, s *httpfx.Stats) error { return m.prepare(s) }),
)

// moduleStats are the Module's Observer and its registration of the counters read from
// Stats. It is built before httpfx's client, which takes the Observer, so its hook starts
// before httpfx's and stops after it. fx runs the hooks one at a time, after fx.New has
// prepared it.
type moduleStats struct {
	obs  *Observer
	mp   metric.MeterProvider
	inst *statsInstruments // made in fx.New
	s    *httpfx.Stats

	reg metric.Registration // between start and stop; nil otherwise
}

// moduleParams are the inputs of the Module.
type moduleParams struct {
	fx.In

	Lifecycle     fx.Lifecycle
	MeterProvider metric.MeterProvider `optional:"true"`
}

func newModuleStats(p moduleParams) (*moduleStats, error) {
	mp := p.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	obs, err := NewObserver(mp)
	if err != nil {
		return nil, err
	}
	m := &moduleStats{obs: obs, mp: mp}
	p.Lifecycle.Append(fx.Hook{OnStart: m.start, OnStop: m.stop})
	return m, nil
}

// prepare makes the instruments of s's counters, in fx.New, so that a provider that refuses
// one fails it.
func (m *moduleStats) prepare(s *httpfx.Stats) error {
	inst, err := m.obs.statsInstruments()
	if err != nil {
		return err
	}
	m.inst, m.s = inst, s
	return nil
}

// start registers the callback of the counters.
func (m *moduleStats) start(context.Context) error {
	reg, err := m.inst.register(m.obs.meter, m.s)
	if err != nil {
		return err
	}
	m.reg = reg
	return nil
}

// stop flushes the provider if it can, and unregisters the callback.
func (m *moduleStats) stop(ctx context.Context) error {
	if m.reg == nil {
		return nil
	}
	var errs []error
	if f, ok := m.mp.(interface{ ForceFlush(context.Context) error }); ok {
		if err := f.ForceFlush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("otelhttpfx: flush at stop: %w", err))
		}
	}
	if err := m.reg.Unregister(); err != nil {
		errs = append(errs, fmt.Errorf("otelhttpfx: unregister the callback of httpfx.Stats: %w", err))
	}
	m.reg = nil
	return errors.Join(errs...)
}
