// Package promhttpfx exposes httpfx's counters and request durations to Prometheus.
//
// Add Module beside httpfx.Module; it registers a Collector on the graph's
// prometheus.Registerer, or on prometheus.DefaultRegisterer if the graph has none, from start
// to stop:
//
//	fx.New(httpfx.Module, promhttpfx.Module, ...)
//
// Without fx, give NewObserver's Observer to httpfx.New and register NewCollector of the
// Stats it returns; the registration is the caller's, to unregister after httpfx.Shutdown.
package promhttpfx

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/httpfx/httpfx"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
)

// Module adds an *Observer to the value group "httpfx.observers" and registers a Collector of
// httpfx.Stats and that Observer on the prometheus.Registerer of the graph, if there is one,
// else on prometheus.DefaultRegisterer.
//
// It registers the Collector at start, before httpfx starts, and unregisters it at stop,
// after httpfx's own stop, so that what the drain did can be scraped until then. An app that
// fails at fx.New has registered nothing; one that fails at start has unregistered what it
// registered by the time Start returns (fx stops what started); one that stopped has
// unregistered it by the time Stop returns, so that another app can register on the same
// registry. A registration that fails (the same metrics registered already, by another app
// that has started and not stopped) fails start with an error that says so.
var Module = fx.Module("promhttpfx",
	fx.Provide(
		fx.Private,
		newRegistration,
	),
	fx.Provide(
		fx.Annotate(func(r *registration) httpfx.Observer { return r.obs }, fx.ResultTags(`group:"httpfx.observers"`)),
	),
	fx.Invoke(func(r *registration, s *httpfx.Stats) { r.c = NewCollector(s, r.obs) }),
)

// registrationParams are the inputs of the Module.
type registrationParams struct {
	fx.In

	Lifecycle  fx.Lifecycle
	Registerer prometheus.Registerer `optional:"true"`
}

// registration is the Module's Observer, and its Collector with where it goes. It is built
// before httpfx's client, which takes the Observer, so its hook starts before httpfx's and
// stops after it. fx runs the hooks one at a time, after fx.New has set c.
type registration struct {
	obs *Observer
	reg prometheus.Registerer
	c   prometheus.Collector // set by the Module's Invoke, in fx.New

	registered bool // c is registered on reg: between a start that registered and stop
}

func newRegistration(p registrationParams) *registration {
	r := &registration{obs: NewObserver(), reg: p.Registerer}
	if r.reg == nil {
		r.reg = prometheus.DefaultRegisterer
	}
	p.Lifecycle.Append(fx.Hook{OnStart: r.register, OnStop: r.unregister})
	return r
}

// register registers the Collector, at start.
func (r *registration) register(context.Context) error {
	if err := r.reg.Register(r.c); err != nil {
		if errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return fmt.Errorf("promhttpfx: register: %w: an app with promhttpfx.Module that has started and not stopped, or another Collector of httpfx, is registered on the same prometheus.Registerer", err)
		}
		return fmt.Errorf("promhttpfx: register: %w", err)
	}
	r.registered = true
	return nil
}

// unregister unregisters the Collector, at stop.
func (r *registration) unregister(context.Context) error {
	if r.registered {
		r.reg.Unregister(r.c)
		r.registered = false
	}
	return nil
}

// Observer is an httpfx.Observer that records, for Prometheus, each request's duration in
// httpfx_request_duration_seconds (a histogram with the buckets of the OpenTelemetry HTTP
// client conventions, 5 ms to 10 s), by upstream (the upstream client's name, "" for the
// shared client), method (GET, POST, ..., OTHER), code (the status code, "" if none came)
// and error (an httpfx.ErrorClass, "" if none), and each connection closed in
// httpfx_connections_closed_total by reason. It is a prometheus.Collector of these two;
// Collector includes it. It is safe for concurrent use; NewObserver makes one, its zero value
// is not usable.
type Observer struct {
	duration *prometheus.HistogramVec
	closed   *prometheus.CounterVec
}

var (
	_ httpfx.Observer      = (*Observer)(nil)
	_ prometheus.Collector = (*Observer)(nil)
)

// NewObserver returns an Observer with empty metrics.
func NewObserver() *Observer {
	return &Observer{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "httpfx_request_duration_seconds",
			Help:    "Duration of the requests of the httpfx client, from admission until the response body is finished.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}, // OpenTelemetry's
		}, []string{"upstream", "method", "code", "error"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "httpfx_connections_closed_total",
			Help: "Connections of the transport httpfx owns that closed, by reason: closed (by net/http or the peer), stop, or why httpfx retired them.",
		}, []string{"reason"}),
	}
}

// RequestStarted implements httpfx.Observer; it records nothing.
func (o *Observer) RequestStarted(httpfx.RequestEvent) {}

// RequestFinished implements httpfx.Observer: it records the request's duration.
func (o *Observer) RequestFinished(ev httpfx.RequestEvent) {
	code := ""
	if ev.StatusCode > 0 {
		code = strconv.Itoa(ev.StatusCode)
	}
	o.duration.WithLabelValues(ev.Upstream, method(ev.Method), code, string(ev.Error)).Observe(ev.Duration.Seconds())
}

// ConnChanged implements httpfx.Observer: it counts closed connections by reason.
func (o *Observer) ConnChanged(ev httpfx.ConnEvent) {
	if ev.Kind == httpfx.ConnClosed {
		o.closed.WithLabelValues(ev.Reason).Inc()
	}
}

// Describe implements prometheus.Collector.
func (o *Observer) Describe(ch chan<- *prometheus.Desc) {
	o.duration.Describe(ch)
	o.closed.Describe(ch)
}

// Collect implements prometheus.Collector.
func (o *Observer) Collect(ch chan<- prometheus.Metric) {
	o.duration.Collect(ch)
	o.closed.Collect(ch)
}

// method returns m if it is a standard method, else "OTHER", so that the label stays small.
func method(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return m
	}
	return "OTHER"
}
