package otelhttpfx_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// collect returns the metrics reader has, by name.
func collect(t testing.TB, reader sdkmetric.Reader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return byName(rm)
}

// byName returns the metrics of rm by name.
func byName(rm metricdata.ResourceMetrics) map[string]metricdata.Metrics {
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// attrs renders a set as "k=v,k=v" in key order, for comparisons and messages.
func attrs(s attribute.Set) string {
	out := ""
	for i, kv := range s.ToSlice() {
		if i > 0 {
			out += ","
		}
		out += string(kv.Key) + "=" + kv.Value.Emit()
	}
	return out
}

// flushReader is a ManualReader that also collects when the provider is flushed, as a
// periodic reader exports then, and keeps what it collected last.
type flushReader struct {
	*sdkmetric.ManualReader

	mu      sync.Mutex
	flushes int
	flushed metricdata.ResourceMetrics
}

func newFlushReader() *flushReader { return &flushReader{ManualReader: sdkmetric.NewManualReader()} }

// ForceFlush implements sdkmetric.Reader: it collects, as an exporting reader would.
func (r *flushReader) ForceFlush(ctx context.Context) error {
	var rm metricdata.ResourceMetrics
	if err := r.Collect(ctx, &rm); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes++
	r.flushed = rm
	return nil
}

// lastFlush returns the number of flushes and the metrics of the last, by name.
func (r *flushReader) lastFlush() (int, map[string]metricdata.Metrics) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flushes, byName(r.flushed)
}

// countingProvider is a meter provider that counts the callbacks registered with its meters
// and unregistered.
type countingProvider struct {
	metric.MeterProvider
	registered, unregistered atomic.Int64
}

func (p *countingProvider) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return countingMeter{Meter: p.MeterProvider.Meter(name, opts...), p: p}
}

// live is the number of callbacks registered and not unregistered.
func (p *countingProvider) live() int64 { return p.registered.Load() - p.unregistered.Load() }

type countingMeter struct {
	metric.Meter
	p *countingProvider
}

func (m countingMeter) RegisterCallback(f metric.Callback, insts ...metric.Observable) (metric.Registration, error) {
	reg, err := m.Meter.RegisterCallback(f, insts...)
	if err != nil {
		return nil, err
	}
	m.p.registered.Add(1)
	return &countingRegistration{Registration: reg, p: m.p}, nil
}

type countingRegistration struct {
	metric.Registration
	p    *countingProvider
	once sync.Once
}

func (r *countingRegistration) Unregister() error {
	r.once.Do(func() { r.p.unregistered.Add(1) })
	return r.Registration.Unregister()
}
