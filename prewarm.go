package httpfx

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// prewarmDial is one connection that prewarm opens. Its request carries it in its context;
// the dial, which keeps the request's context values, finds it in connSet.wrap.
type prewarmDial struct {
	cancel  context.CancelFunc // cancels the request as soon as its dial has begun
	release <-chan struct{}    // closed when every request of the batch has given up its dial
	stop    <-chan struct{}    // the start context's end
	done    chan error         // the first outcome: the dial's (the handshake's for https), or the request's
	tls     bool               // the handshake's outcome is the one that counts
	conn    *conn              // the connection dialled, set before the handshake
}

// began is called by connSet.wrap when the dial of a pre-warming request begins: it cancels
// the request, which then never takes a connection and sends nothing, and holds the dial until
// every request of the batch has returned, so that none of them can be handed a connection of
// the batch (net/http pools a connection whose dial outlives its request).
func (p *prewarmDial) began() {
	p.cancel()
	select {
	case <-p.release:
	case <-p.stop:
	}
}

// report records the outcome of the dial, once.
func (p *prewarmDial) report(err error) {
	select {
	case p.done <- err:
	default:
	}
}

// prewarm opens n connections to the upstream at base through the owned transport and leaves
// them in its idle pool, so that the first burst after a deploy pays no handshake per caller.
// It sends no request. All n are dialled at once, so that no request of the batch can find a
// connection of another in the pool (it would then be sent); an HTTP/2 upstream keeps one of
// them, as net/http does. It waits, as long as ctx allows, until every dial (and TLS
// handshake) has ended, and returns the first error.
func (o *owner) prewarm(ctx context.Context, base *url.URL, n int) error {
	if m := o.transport.MaxConnsPerHost; m > 0 {
		n = min(n, m)
	}
	bound := o.cfg.DialTimeout + o.cfg.TLSHandshakeTimeout // a dial and a handshake, at most
	if o.cfg.DialTimeout <= 0 || o.cfg.TLSHandshakeTimeout <= 0 {
		bound = 30 * time.Second
	}
	ctx, stop := context.WithTimeout(ctx, bound)
	defer stop()
	returned := make(chan struct{}, n)
	release := make(chan struct{})
	dials := make([]*prewarmDial, n)
	var wg sync.WaitGroup
	for i := range dials {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		p := &prewarmDial{cancel: cancel, release: release, stop: ctx.Done(),
			done: make(chan error, 1), tls: base.Scheme == "https"}
		dials[i] = p
		if p.tls {
			rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
				TLSHandshakeDone: func(cs tls.ConnectionState, err error) {
					if c := p.conn; err == nil && c != nil {
						o.conns.announce(c, &cs) // ready: a connection like any other
					}
					p.report(err)
				},
			})
		}
		req, err := http.NewRequestWithContext(context.WithValue(rctx, dialHookKey{}, &dialHook{began: p.began, ended: p.report, conn: func(c *conn) { p.conn = c }, tls: p.tls}), http.MethodHead, base.String(), nil)
		if err != nil {
			cancel()
			for _, d := range dials[:i] {
				d.cancel()
			}
			close(release)
			wg.Wait()
			return fmt.Errorf("httpfx: pre-warm: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := o.transport.RoundTrip(req)
			switch {
			case err == nil: // handed a pooled connection after all (never expected)
				resp.Body.Close()
				p.report(nil)
			case rctx.Err() == nil: // failed before its dial began
				p.report(err)
			}
			cancel()
			returned <- struct{}{}
		}()
	}
	// Every request returns once its dial has begun (began cancels it); one still queued for
	// a connection slot is cancelled when ctx ends.
	for waiting := n; waiting > 0; {
		select {
		case <-returned:
			waiting--
		case <-ctx.Done():
			for _, p := range dials {
				p.cancel()
			}
			for ; waiting > 0; waiting-- {
				<-returned
			}
		}
	}
	close(release)
	wg.Wait()
	var first error
	for _, p := range dials {
		select {
		case err := <-p.done:
			if first == nil {
				first = err
			}
		case <-ctx.Done():
			return fmt.Errorf("httpfx: pre-warm: %w", ctx.Err())
		}
	}
	return first
}

// prewarmUpstreams pre-warms, concurrently, every upstream origin that an upstream client
// asks to (the largest count of those that share it), and logs what it opened. It never
// fails: an upstream that is down or slow is logged, and its requests dial as they need. It
// takes at most half of what is left of ctx, the start context, so that the hooks after it
// still have time to start: a dial still running then goes on in the transport's pool, and
// stop closes it. An origin that has connections already (a component called it while the
// graph was built) is left alone: a pre-warming request could be handed one of them, and sent.
func (o *owner) prewarmUpstreams(ctx context.Context) {
	if o.inUse != o.transport {
		return // a caller's transport: its pool is not httpfx's to fill
	}
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(deadline)/2))
		defer cancel()
	}
	type origin struct {
		base  *url.URL
		n     int
		names []string
	}
	byOrigin := map[string]*origin{}
	var order []*origin
	for _, u := range o.upstreams {
		if u.prewarm <= 0 {
			continue
		}
		key := u.base.Scheme + "://" + u.base.Host
		g := byOrigin[key]
		if g == nil {
			g = &origin{base: &url.URL{Scheme: u.base.Scheme, Host: u.base.Host, Path: "/"}}
			byOrigin[key] = g
			order = append(order, g)
		}
		g.n = max(g.n, u.prewarm)
		g.names = append(g.names, u.name)
	}
	for i := 0; i < len(order); i++ {
		if g := order[i]; o.conns.count(hostPort(g.base)) > 0 {
			o.log.Info("httpfx upstream pre-warm skipped: it has connections already",
				zap.Strings("upstreams", g.names), zap.Int("open", o.conns.count(hostPort(g.base))))
			order = slices.Delete(order, i, i+1)
			i--
		}
	}
	if len(order) == 0 {
		return
	}
	type result struct {
		g    *origin
		err  error
		took time.Duration
	}
	done := make(chan result, len(order))
	for _, g := range order {
		go func() {
			began := time.Now()
			err := o.prewarm(ctx, g.base, g.n)
			done <- result{g, err, time.Since(began)}
		}()
	}
	for range order {
		r := <-done
		fields := []zap.Field{zap.Strings("upstreams", r.g.names), zap.Int("wanted", r.g.n),
			zap.Int("open", o.conns.count(hostPort(r.g.base))), zap.Duration("took", r.took)}
		if r.err != nil {
			o.log.Warn("httpfx upstream pre-warm failed; its requests dial as they need", append(fields, zap.Error(r.err))...)
			continue
		}
		o.log.Info("httpfx upstream pre-warmed", fields...)
	}
}
