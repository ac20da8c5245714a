package httpfx

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"
)

// hook returns the lifecycle hook of o: start logs the settings, stop runs the stop sequence.
func (o *owner) hook() fx.Hook {
	return fx.Hook{OnStart: o.start, OnStop: o.stop}
}

// start logs the effective settings once, and whether the graph hands out a client or
// transport that httpfx did not build, and pre-warms the upstreams that ask for it, as long as
// ctx allows. It never fails.
func (o *owner) start(ctx context.Context) error {
	defer o.prewarmUpstreams(ctx)
	c := o.cfg
	o.log.Info("httpfx client ready",
		zap.Duration("timeout", c.Timeout),
		zap.Duration("dial_timeout", c.DialTimeout),
		zap.Duration("keep_alive", c.KeepAlive),
		zap.Duration("tls_handshake_timeout", c.TLSHandshakeTimeout),
		zap.Duration("response_header_timeout", c.ResponseHeaderTimeout),
		zap.Duration("expect_continue_timeout", c.ExpectContinueTimeout),
		zap.Duration("idle_conn_timeout", c.IdleConnTimeout),
		zap.Int("max_idle_conns", c.MaxIdleConns),
		zap.Int("max_idle_conns_per_host", c.MaxIdleConnsPerHost),
		zap.Int("max_conns_per_host", c.MaxConnsPerHost),
		zap.Int64("max_response_header_bytes", c.MaxResponseHeaderBytes),
		zap.Bool("compression", !c.DisableCompression),
		zap.Bool("http2", !c.DisableHTTP2),
		zap.String("proxy", c.proxyForLog()),
		zap.String("tls_min_version", c.TLSMinVersion),
		zap.Bool("tls_extra_roots", c.TLSCAFile != "" || c.TLSCAPEM != ""),
		zap.Bool("tls_client_certificate", c.TLSCertFile != ""),
		zap.Bool("user_agent_set", c.UserAgent != ""),
		zap.Duration("drain_timeout", c.DrainTimeout),
		zap.Duration("max_conn_lifetime", c.MaxConnLifetime),
		zap.Duration("dns_ttl", c.DNSTTL),
		zap.Duration("dns_stale_ttl", c.DNSStaleTTL),
		zap.Duration("http2_send_ping_timeout", c.HTTP2SendPingTimeout),
		zap.Duration("http2_ping_timeout", c.HTTP2PingTimeout),
		zap.Duration("http2_write_byte_timeout", c.HTTP2WriteByteTimeout),
		zap.String("round_tripper", o.nextType),
	)
	if c.MaxConnsPerHost == 0 || c.MaxConnsPerHost > c.MaxIdleConnsPerHost {
		o.log.Warn("httpfx pool may open more connections per host than it keeps idle; the extra ones are closed after use",
			zap.Int("max_conns_per_host", c.MaxConnsPerHost),
			zap.Int("max_idle_conns_per_host", c.MaxIdleConnsPerHost))
	}
	if c.TLSInsecureSkipVerify {
		o.log.Warn("httpfx TLS certificate verification is OFF (TLSInsecureSkipVerify): anyone on the path can read and change the traffic")
	}
	used := o.stats.Snapshot().Upstreams
	for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if _, ok := used[name]; !ok {
			o.log.Warn("httpfx upstream is configured but no component takes a client of that name", zap.String("upstream", name))
		}
	}
	if o.inUse != nil && o.inUse != o.transport {
		o.log.Info("httpfx client sends through a caller-supplied *http.Transport; httpfx drains its requests but will not close it")
	}
	if o.inGraph != nil && o.inGraph != o.client {
		o.log.Info("httpfx: a caller-supplied *http.Client is in use; httpfx will neither drain nor close it")
	}
	return nil
}

// stop runs the stop sequence once; later calls return the first call's result.
func (o *owner) stop(ctx context.Context) error {
	o.stopOnce.Do(func() { o.stopErr = o.drain(ctx) })
	return o.stopErr
}

// drain is the stop sequence of the design: gate, drain, close idle, cut past the bound, log.
func (o *owner) drain(ctx context.Context) error {
	began := time.Now()
	// 1. Gate: from here on every new request fails with ErrClosed.
	if o.stats.gate.Or(closedBit)&^closedBit == 0 {
		o.signalDrained()
	}
	// A request in flight whose context ends is finished then, so that the drain does not
	// wait for bodies their callers abandoned.
	o.stopping.Store(true)
	for _, c := range o.calls.visit(nil) {
		c.finishWatch()
	}
	// 2. Drain, bounded by ctx and DrainTimeout.
	if d := o.cfg.DrainTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var err error
	var cut int64
	select {
	case <-o.drained:
	case <-ctx.Done():
		select {
		case <-o.drained:
		default:
			cut = o.stats.gate.Load() &^ closedBit
			o.stats.cut.Add(cut)
			err = fmt.Errorf("httpfx: stop cut %d in-flight request(s) after waiting %v for them: %w",
				cut, time.Since(began).Round(time.Millisecond), ctx.Err())
		}
	}
	// 3. Close the owned transport's idle connections, through the pointer httpfx holds.
	o.transport.CloseIdleConnections()
	// 4. Close what is left and refuse new dials, so that nothing outlives stop and cut
	// requests fail instead of hanging: bodies still open (their callers may never close
	// them, and net/http holds a connection and two goroutines for each), then connections
	// (of requests still waiting for headers, or dialled late).
	if err != nil {
		for _, c := range o.calls.close() {
			c.cut()
		}
	}
	closed := o.conns.closeAll()
	o.sweep.stop() // nothing is in flight now, or was cut
	o.dns.close()  // after the dials: none can start a refresh now
	// 5. One summary line.
	s := o.stats.Snapshot()
	o.log.Info("httpfx client stopped",
		zap.Int64("requests", s.Requests),
		zap.Int64("failed", s.Failed),
		zap.Int64("rejected", s.Rejected),
		zap.Int64("conns_opened", s.ConnsOpened),
		zap.Float64("reuse_ratio", s.ReuseRatio()),
		zap.Int64("cut", cut),
		zap.Int("conns_force_closed", closed),
		zap.Int64("replayed", s.Replayed),
		zap.Any("conns_retired", s.ConnsRetired),
		zap.Int("idle_bounds_learned", len(s.IdleBounds)),
		zap.Duration("drain", time.Since(began)),
	)
	return err
}
