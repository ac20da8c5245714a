package promhttpfx

import (
	"github.com/httpfx/httpfx"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector is a prometheus.Collector of one httpfx client's Stats, read at each scrape, and
// of its Observer's metrics:
//
//	httpfx_requests_total                                   counter    requests admitted
//	httpfx_requests_in_flight                               gauge      admitted, not finished
//	httpfx_requests_failed_total                            counter    admitted, ended with an error
//	httpfx_requests_rejected_total                          counter    refused with ErrClosed after stop
//	httpfx_requests_cut_total                               counter    cut when the drain bound expired
//	httpfx_requests_waiting                                 gauge      admitted, without a connection yet
//	httpfx_requests_replayed_total                          counter    sent again: provably never reached the server
//	httpfx_retries_total                                    counter    sent again after a failure worth a retry, each time
//	httpfx_retries_budget_refused_total                     counter    retries the retry budget of their origin refused
//	httpfx_connections_opened_total                         counter    connections dialled
//	httpfx_connections_open                                 gauge      connections open
//	httpfx_connections_idle                                 gauge      open connections carrying no request
//	httpfx_connections_in_use                               gauge      open connections carrying a request
//	httpfx_connections_retired_total                        counter    by reason
//	httpfx_idle_bound_seconds                               gauge      by address
//	httpfx_close_idle_ignored_total                         counter    consumers' CloseIdleConnections calls
//	httpfx_tls_handshakes_total                             counter    by resumed ("true", "false")
//	httpfx_client_certificate_expiration_timestamp_seconds  gauge      Unix time of the client certificate's NotAfter
//	httpfx_upstream_requests_total                          counter    by upstream
//	httpfx_upstream_requests_in_flight                      gauge      by upstream
//	httpfx_upstream_requests_failed_total                   counter    by upstream
//	httpfx_upstream_requests_waiting                        gauge      by upstream, waiting for a MaxConnsPerHost slot
//	httpfx_upstream_retries_total                           counter    by upstream
//	httpfx_upstream_retries_budget_refused_total            counter    by upstream
//	httpfx_request_duration_seconds                         histogram  the Observer's; see Observer
//	httpfx_connections_closed_total                         counter    the Observer's, by reason
//
// httpfx_requests_waiting, httpfx_connections_idle and httpfx_connections_in_use are
// reported only if the client has an Observer (httpfx.Snapshot says why);
// httpfx_client_certificate_expiration_timestamp_seconds only if a client certificate is
// configured (Config.TLSCertFile). The upstream metrics are part of the totals. A Collector
// is safe for concurrent use; NewCollector makes one, its zero value is not usable.
type Collector struct {
	stats *httpfx.Stats
	obs   *Observer // nil if none

	requests, inFlight, failed, rejected, cut, waiting *prometheus.Desc
	opened, open, idle, inUse                          *prometheus.Desc
	upRequests, upInFlight, upFailed, upWaiting        *prometheus.Desc
	replayed, retired, idleBound, closeIdleIgnored     *prometheus.Desc
	retries, budgetRefused, upRetries, upBudgetRefused *prometheus.Desc
	handshakes, certExpiry                             *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector of s and obs. obs may be nil: then the Collector has no
// duration histogram and no closed connections.
func NewCollector(s *httpfx.Stats, obs *Observer) *Collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Collector{
		stats:      s,
		obs:        obs,
		requests:   desc("httpfx_requests_total", "Requests the httpfx client admitted."),
		inFlight:   desc("httpfx_requests_in_flight", "Admitted requests of the httpfx client whose response body is not finished."),
		failed:     desc("httpfx_requests_failed_total", "Admitted requests of the httpfx client that ended with an error."),
		rejected:   desc("httpfx_requests_rejected_total", "Requests the httpfx client refused with ErrClosed after stop."),
		cut:        desc("httpfx_requests_cut_total", "Requests in flight that the httpfx client cut when the drain bound expired at stop."),
		waiting:    desc("httpfx_requests_waiting", "Admitted requests of the httpfx client that have no connection yet."),
		opened:     desc("httpfx_connections_opened_total", "Connections the transport httpfx owns has dialled."),
		open:       desc("httpfx_connections_open", "Connections of the transport httpfx owns that are open."),
		idle:       desc("httpfx_connections_idle", "Open connections of the transport httpfx owns that carry no request."),
		inUse:      desc("httpfx_connections_in_use", "Open connections of the transport httpfx owns that carry a request."),
		upRequests: desc("httpfx_upstream_requests_total", "Requests an httpfx upstream client admitted.", "upstream"),
		upInFlight: desc("httpfx_upstream_requests_in_flight", "Admitted requests of an httpfx upstream client whose response body is not finished.", "upstream"),
		upFailed:   desc("httpfx_upstream_requests_failed_total", "Admitted requests of an httpfx upstream client that ended with an error.", "upstream"),
		upWaiting:  desc("httpfx_upstream_requests_waiting", "Requests of an httpfx upstream client waiting for one of its MaxConnsPerHost slots.", "upstream"),
		replayed:   desc("httpfx_requests_replayed_total", "Requests the httpfx client sent again because they provably never reached the server."),
		retired:    desc("httpfx_connections_retired_total", "Connections httpfx retired to keep the pool healthy, by reason.", "reason"),
		idleBound:  desc("httpfx_idle_bound_seconds", "How long the server at an address keeps an idle connection, as httpfx learned it.", "address"),
		closeIdleIgnored: desc("httpfx_close_idle_ignored_total",
			"CloseIdleConnections calls on httpfx clients, ignored so that no consumer empties the shared pool."),
		retries: desc("httpfx_retries_total", "Requests the httpfx client sent again after a failure worth a retry, counted at each retry."),
		budgetRefused: desc("httpfx_retries_budget_refused_total",
			"Retries of the httpfx client that the retry budget of their origin refused."),
		upRetries: desc("httpfx_upstream_retries_total",
			"Requests an httpfx upstream client sent again after a failure worth a retry, counted at each retry.", "upstream"),
		upBudgetRefused: desc("httpfx_upstream_retries_budget_refused_total",
			"Retries of an httpfx upstream client that the retry budget of their origin refused.", "upstream"),
		handshakes: desc("httpfx_tls_handshakes_total",
			"TLS handshakes of the connections the httpfx clients used, by whether they resumed a session.", "resumed"),
		certExpiry: desc("httpfx_client_certificate_expiration_timestamp_seconds",
			"When the client certificate httpfx presents to servers that ask for one expires, in seconds since the Unix epoch."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.inFlight, c.failed, c.rejected, c.cut, c.waiting,
		c.opened, c.open, c.idle, c.inUse, c.upRequests, c.upInFlight, c.upFailed, c.upWaiting,
		c.replayed, c.retired, c.idleBound, c.closeIdleIgnored,
		c.retries, c.budgetRefused, c.upRetries, c.upBudgetRefused, c.handshakes, c.certExpiry} {
		ch <- d
	}
	if c.obs != nil {
		c.obs.Describe(ch)
	}
}

// Collect implements prometheus.Collector: it takes one Snapshot.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats.Snapshot()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter(c.requests, s.Requests)
	gauge(c.inFlight, s.InFlight)
	counter(c.failed, s.Failed)
	counter(c.rejected, s.Rejected)
	counter(c.cut, s.Cut)
	counter(c.opened, s.ConnsOpened)
	gauge(c.open, s.ConnsOpen)
	if s.Waiting >= 0 {
		gauge(c.waiting, s.Waiting)
		gauge(c.idle, s.ConnsIdle)
		gauge(c.inUse, s.ConnsInUse)
	}
	for name, u := range s.Upstreams {
		counter(c.upRequests, u.Requests, name)
		gauge(c.upInFlight, u.InFlight, name)
		counter(c.upFailed, u.Failed, name)
		gauge(c.upWaiting, u.Waiting, name)
		counter(c.upRetries, u.Retries, name)
		counter(c.upBudgetRefused, u.BudgetRefused, name)
	}
	counter(c.replayed, s.Replayed)
	counter(c.closeIdleIgnored, s.CloseIdleIgnored)
	counter(c.retries, s.Retries)
	counter(c.budgetRefused, s.BudgetRefused)
	counter(c.handshakes, s.HandshakesFull, "false")
	counter(c.handshakes, s.HandshakesResumed, "true")
	if !s.ClientCertNotAfter.IsZero() {
		gauge(c.certExpiry, s.ClientCertNotAfter.Unix())
	}
	for reason, n := range s.ConnsRetired {
		counter(c.retired, n, reason)
	}
	for addr, d := range s.IdleBounds {
		ch <- prometheus.MustNewConstMetric(c.idleBound, prometheus.GaugeValue, d.Seconds(), addr)
	}
	if c.obs != nil {
		c.obs.Collect(ch)
	}
}
