package otelhttpfx

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/httpfx/httpfx"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the instrumentation scope of the meter Observer records with.
const ScopeName = "github.com/httpfx/httpfx/otelhttpfx"

// Observer is an httpfx.Observer that records the OpenTelemetry HTTP client metrics:
//
//   - http.client.request.duration (s; the stable convention's buckets, 5 ms to 10 s) with
//     http.request.method, server.address, server.port, url.scheme, and when known
//     http.response.status_code, network.protocol.version and error.type (the
//     httpfx.ErrorClass, "_OTHER" for ErrorOther, or the status code from 400 on);
//   - http.client.active_requests ({request}) with server.address and server.port;
//   - http.client.open_connections ({connection}) with http.connection.state (active,
//     idle), server.address, server.port and network.peer.address;
//   - http.client.connection.duration (s; 10 ms to 300 s, the conventions name none) with
//     server.address, server.port and network.peer.address;
//   - httpfx.client.connections.retired ({connection}): connections httpfx closed on purpose,
//     by httpfx.connection.reason (everything but "closed": "stop", and the httpfx.Retired
//     reasons "idle", "lifetime", "address_gone", "server_closed", "dead").
//
// Requests of an upstream client carry httpfx.upstream, its name. server.address and
// server.port of connections are those dialled (the proxy's, with a proxy).
//
// ObserveStats adds httpfx's counters read from httpfx.Stats. An Observer is safe for
// concurrent use; NewObserver makes one, its zero value is not usable.
type Observer struct {
	duration     metric.Float64Histogram
	active       metric.Int64UpDownCounter
	open         metric.Int64UpDownCounter
	connDuration metric.Float64Histogram
	retired      metric.Int64Counter
	meter        metric.Meter

	mu            sync.Mutex
	conns         map[connKey]*connAttrs           // by address and peer, while a connection to them is open
	activeOptions map[activeKey][]metric.AddOption // of http.client.active_requests; up to maxCached
	reqs          map[reqKey][]metric.RecordOption // of http.client.request.duration; up to maxCached
}

// maxCached bounds each cache of attribute sets; past it, sets are built per request.
const maxCached = 1024

var _ httpfx.Observer = (*Observer)(nil)

// NewObserver returns an Observer recording with mp's meter named ScopeName. It returns an
// error if mp refuses an instrument.
func NewObserver(mp metric.MeterProvider) (*Observer, error) {
	m := mp.Meter(ScopeName)
	o := &Observer{
		meter:         m,
		conns:         make(map[connKey]*connAttrs),
		activeOptions: make(map[activeKey][]metric.AddOption),
		reqs:          make(map[reqKey][]metric.RecordOption),
	}
	var errs [5]error
	o.duration, errs[0] = m.Float64Histogram("http.client.request.duration",
		metric.WithDescription("Duration of HTTP client requests."), metric.WithUnit("s"),
		// The stable conventions' boundaries, in seconds.
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
	o.active, errs[1] = m.Int64UpDownCounter("http.client.active_requests",
		metric.WithDescription("Number of active HTTP requests."), metric.WithUnit("{request}"))
	o.open, errs[2] = m.Int64UpDownCounter("http.client.open_connections",
		metric.WithDescription("Number of outbound HTTP connections that are currently active or idle on the client."),
		metric.WithUnit("{connection}"))
	o.connDuration, errs[3] = m.Float64Histogram("http.client.connection.duration",
		metric.WithDescription("The duration of the successfully established outbound HTTP connections."),
		// The conventions name no boundaries for it; these are .NET's, which records it too.
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
	o.retired, errs[4] = m.Int64Counter("httpfx.client.connections.retired",
		metric.WithDescription("Connections httpfx closed on purpose, by reason."), metric.WithUnit("{connection}"))
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("otelhttpfx: instrument: %w", err)
		}
	}
	return o, nil
}

// ObserveStats registers, with the Observer's meter, a callback that reads httpfx's counters
// from s at each collection:
//
//   - httpfx.client.connections.opened ({connection}): connections the owned transport
//     dialled;
//   - httpfx.client.requests.cut ({request}): in flight when stop's drain bound expired;
//   - httpfx.client.requests.rejected ({request}): refused with httpfx.ErrClosed after stop;
//   - httpfx.client.requests.replayed ({request}): sent again because they provably never
//     reached the server;
//   - httpfx.client.requests.waiting ({request}, an up-down counter): admitted, without a
//     connection yet (only with an Observer installed, which the Module does);
//   - httpfx.client.requests.retried ({retry}): requests sent again after a failure worth a
//     retry, each time; httpfx.client.requests.retry_budget_refused ({retry}): retries the
//     retry budget of their origin refused;
//   - httpfx.client.upstream.requests.retried and
//     httpfx.client.upstream.requests.retry_budget_refused ({retry}): the same for each
//     upstream client, with httpfx.upstream (part of the totals above);
//   - httpfx.client.tls.handshakes ({handshake}): TLS handshakes of the connections used, with
//     tls.resumed (true if it resumed a session);
//   - httpfx.client.tls.certificate.not_after (s, a gauge): when the client certificate
//     (httpfx.Config.TLSCertFile) expires, in seconds since the Unix epoch; only if one is
//     configured.
//
// It returns an error if the meter refuses an instrument or the callback. The caller owns
// the registration: Unregister it once s's client has stopped (the Module does, at stop),
// so that the provider no longer reads s.
func (o *Observer) ObserveStats(s *httpfx.Stats) (metric.Registration, error) {
	inst, err := o.statsInstruments()
	if err != nil {
		return nil, err
	}
	return inst.register(o.meter, s)
}

// statsInstruments are the instruments of ObserveStats. Making them registers nothing.
type statsInstruments struct {
	opened, cut, rejected, replayed, retried, refused, upRetried, upRefused, handshakes metric.Int64ObservableCounter
	waiting                                                                             metric.Int64ObservableUpDownCounter
	notAfter                                                                            metric.Int64ObservableGauge
}

// statsInstruments makes the instruments of ObserveStats with o's meter.
func (o *Observer) statsInstruments() (*statsInstruments, error) {
	m := o.meter
	i := new(statsInstruments)
	counter := func(dst *metric.Int64ObservableCounter, name, unit, desc string) error {
		var err error
		*dst, err = m.Int64ObservableCounter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		return err
	}
	var errs [11]error
	errs[0] = counter(&i.opened, "httpfx.client.connections.opened", "{connection}",
		"Connections the transport httpfx owns has dialled.")
	errs[1] = counter(&i.cut, "httpfx.client.requests.cut", "{request}",
		"Requests in flight that httpfx cut when the drain bound expired at stop.")
	errs[2] = counter(&i.rejected, "httpfx.client.requests.rejected", "{request}",
		"Requests httpfx refused with ErrClosed after stop.")
	i.waiting, errs[3] = m.Int64ObservableUpDownCounter("httpfx.client.requests.waiting",
		metric.WithDescription("Admitted requests that have no connection yet."), metric.WithUnit("{request}"))
	errs[4] = counter(&i.replayed, "httpfx.client.requests.replayed", "{request}",
		"Requests httpfx sent again because they provably never reached the server.")
	errs[5] = counter(&i.retried, "httpfx.client.requests.retried", "{retry}",
		"Requests httpfx sent again after a failure worth a retry, counted at each retry.")
	errs[6] = counter(&i.refused, "httpfx.client.requests.retry_budget_refused", "{retry}",
		"Retries that the retry budget of their origin refused.")
	errs[7] = counter(&i.upRetried, "httpfx.client.upstream.requests.retried", "{retry}",
		"Requests of an upstream client that httpfx sent again after a failure worth a retry, counted at each retry.")
	errs[8] = counter(&i.upRefused, "httpfx.client.upstream.requests.retry_budget_refused", "{retry}",
		"Retries of an upstream client that the retry budget of their origin refused.")
	errs[9] = counter(&i.handshakes, "httpfx.client.tls.handshakes", "{handshake}",
		"TLS handshakes of the connections the httpfx clients used, by whether they resumed a session.")
	i.notAfter, errs[10] = m.Int64ObservableGauge("httpfx.client.tls.certificate.not_after",
		metric.WithDescription("When the client certificate httpfx presents expires, in seconds since the Unix epoch."), metric.WithUnit("s"))
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("otelhttpfx: instrument: %w", err)
		}
	}
	return i, nil
}

// Attribute sets of the counters read from Stats.
var (
	resumedSet = metric.WithAttributeSet(attribute.NewSet(attribute.Bool("tls.resumed", true)))
	fullSet    = metric.WithAttributeSet(attribute.NewSet(attribute.Bool("tls.resumed", false)))
)

// register registers, with m, the callback that reads s into i's instruments.
func (i *statsInstruments) register(m metric.Meter, s *httpfx.Stats) (metric.Registration, error) {
	reg, err := m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		snap := s.Snapshot()
		ob.ObserveInt64(i.opened, snap.ConnsOpened)
		ob.ObserveInt64(i.cut, snap.Cut)
		ob.ObserveInt64(i.rejected, snap.Rejected)
		ob.ObserveInt64(i.replayed, snap.Replayed)
		if snap.Waiting >= 0 {
			ob.ObserveInt64(i.waiting, snap.Waiting)
		}
		ob.ObserveInt64(i.retried, snap.Retries)
		ob.ObserveInt64(i.refused, snap.BudgetRefused)
		for name, u := range snap.Upstreams {
			up := metric.WithAttributeSet(attribute.NewSet(attribute.String("httpfx.upstream", name)))
			ob.ObserveInt64(i.upRetried, u.Retries, up)
			ob.ObserveInt64(i.upRefused, u.BudgetRefused, up)
		}
		ob.ObserveInt64(i.handshakes, snap.HandshakesFull, fullSet)
		ob.ObserveInt64(i.handshakes, snap.HandshakesResumed, resumedSet)
		if !snap.ClientCertNotAfter.IsZero() {
			ob.ObserveInt64(i.notAfter, snap.ClientCertNotAfter.Unix())
		}
		return nil
	}, i.opened, i.cut, i.rejected, i.waiting, i.replayed, i.retried, i.refused, i.upRetried, i.upRefused, i.handshakes, i.notAfter)
	if err != nil {
		return nil, fmt.Errorf("otelhttpfx: register callback: %w", err)
	}
	return reg, nil
}

// RequestStarted implements httpfx.Observer: the request is active.
func (o *Observer) RequestStarted(ev httpfx.RequestEvent) {
	o.active.Add(context.Background(), 1, o.activeOpts(ev)...)
}

// RequestFinished implements httpfx.Observer: the request is no longer active, and its
// duration is recorded.
func (o *Observer) RequestFinished(ev httpfx.RequestEvent) {
	ctx := context.Background()
	o.active.Add(ctx, -1, o.activeOpts(ev)...)
	o.duration.Record(ctx, ev.Duration.Seconds(), o.requestOpts(ev)...)
}

// activeKey identifies the attributes of http.client.active_requests.
type activeKey struct {
	host, upstream string
	port           int
}

// activeOpts returns the options of ev for http.client.active_requests.
func (o *Observer) activeOpts(ev httpfx.RequestEvent) []metric.AddOption {
	k := activeKey{ev.Host, ev.Upstream, ev.Port}
	o.mu.Lock()
	opts, ok := o.activeOptions[k]
	o.mu.Unlock()
	if ok {
		return opts
	}
	kv := []attribute.KeyValue{attribute.String("server.address", ev.Host), attribute.Int("server.port", ev.Port)}
	if ev.Upstream != "" {
		kv = append(kv, attribute.String("httpfx.upstream", ev.Upstream))
	}
	opts = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
	o.mu.Lock()
	if len(o.activeOptions) < maxCached {
		o.activeOptions[k] = opts
	}
	o.mu.Unlock()
	return opts
}

// reqKey identifies the attributes of http.client.request.duration.
type reqKey struct {
	method, host, scheme, upstream string
	port, status, major, minor     int
	class                          httpfx.ErrorClass
}

// requestOpts returns the options of ev for http.client.request.duration.
func (o *Observer) requestOpts(ev httpfx.RequestEvent) []metric.RecordOption {
	k := reqKey{method(ev.Method), ev.Host, ev.Scheme, ev.Upstream, ev.Port, ev.StatusCode, ev.ProtoMajor, ev.ProtoMinor, ev.Error}
	o.mu.Lock()
	opts, ok := o.reqs[k]
	o.mu.Unlock()
	if ok {
		return opts
	}
	kv := make([]attribute.KeyValue, 0, 9)
	kv = append(kv,
		attribute.String("http.request.method", k.method),
		attribute.String("server.address", ev.Host),
		attribute.Int("server.port", ev.Port),
		attribute.String("url.scheme", ev.Scheme),
	)
	if ev.StatusCode > 0 {
		kv = append(kv, attribute.Int("http.response.status_code", ev.StatusCode))
	}
	if ev.ProtoMajor > 0 {
		kv = append(kv, attribute.String("network.protocol.version", protoVersion(ev.ProtoMajor, ev.ProtoMinor)))
	}
	switch {
	case ev.Error == httpfx.ErrorOther:
		kv = append(kv, attribute.String("error.type", "_OTHER"))
	case ev.Error != "":
		kv = append(kv, attribute.String("error.type", string(ev.Error)))
	case ev.StatusCode >= 400:
		kv = append(kv, attribute.String("error.type", strconv.Itoa(ev.StatusCode)))
	}
	if ev.Upstream != "" {
		kv = append(kv, attribute.String("httpfx.upstream", ev.Upstream))
	}
	opts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
	o.mu.Lock()
	if len(o.reqs) < maxCached {
		o.reqs[k] = opts
	}
	o.mu.Unlock()
	return opts
}

// ConnChanged implements httpfx.Observer: it moves the connection between the states of
// http.client.open_connections, and records the duration of one that closed.
func (o *Observer) ConnChanged(ev httpfx.ConnEvent) {
	ctx := context.Background()
	a := o.connAttrs(ev)
	switch ev.Kind {
	case httpfx.ConnOpened:
		o.open.Add(ctx, 1, a.idle...)
	case httpfx.ConnActive:
		o.open.Add(ctx, -1, a.idle...)
		o.open.Add(ctx, 1, a.active...)
	case httpfx.ConnIdle:
		o.open.Add(ctx, -1, a.active...)
		o.open.Add(ctx, 1, a.idle...)
	case httpfx.ConnClosed:
		if ev.WasActive {
			o.open.Add(ctx, -1, a.active...)
		} else {
			o.open.Add(ctx, -1, a.idle...)
		}
		o.connDuration.Record(ctx, ev.Age.Seconds(), a.conn...)
		if ev.Reason != "closed" {
			o.retired.Add(ctx, 1, metric.WithAttributes(attribute.String("httpfx.connection.reason", ev.Reason)))
		}
	}
}

// connKey identifies the attributes of a connection.
type connKey struct{ addr, peer string }

// connAttrs are the measurement options of the connections to one address and peer, built
// once while any is open.
type connAttrs struct {
	conns        int // open connections that use them
	idle, active []metric.AddOption
	conn         []metric.RecordOption
}

// connAttrs returns the options of ev's connection, counting it in on ConnOpened and out on
// ConnClosed.
func (o *Observer) connAttrs(ev httpfx.ConnEvent) *connAttrs {
	k := connKey{ev.Addr, ev.Peer}
	o.mu.Lock()
	defer o.mu.Unlock()
	a := o.conns[k]
	if a == nil {
		host, port := splitHostPort(ev.Addr)
		peer, _ := splitHostPort(ev.Peer)
		base := []attribute.KeyValue{
			attribute.String("server.address", host),
			attribute.Int("server.port", port),
			attribute.String("network.peer.address", peer),
		}
		a = &connAttrs{
			conn:   []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(base...))},
			idle:   []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(append(base, attribute.String("http.connection.state", "idle"))...))},
			active: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(append(base, attribute.String("http.connection.state", "active"))...))},
		}
		o.conns[k] = a
	}
	switch ev.Kind {
	case httpfx.ConnOpened:
		a.conns++
	case httpfx.ConnClosed:
		if a.conns--; a.conns <= 0 {
			delete(o.conns, k)
		}
	}
	return a
}

// method returns m if the conventions know it, else "_OTHER".
func method(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY":
		return m
	}
	return "_OTHER"
}

// protoVersion is network.protocol.version: "1.1", "1.0", "2", "3".
func protoVersion(major, minor int) string {
	if major >= 2 && minor == 0 {
		return strconv.Itoa(major)
	}
	return strconv.Itoa(major) + "." + strconv.Itoa(minor)
}

// splitHostPort splits "host:port"; port is 0 if there is none.
func splitHostPort(hp string) (string, int) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return hp, 0
	}
	port, _ := strconv.Atoi(p)
	return host, port
}
